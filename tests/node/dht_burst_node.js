// A persistent dht-rpc 4.9.6 node on 127.0.0.1 (no bootstrap: the first node
// of a network) for bench/dht_flood.py: prints {"port": N, "pid": P} once
// bound; every line on stdin is answered with one line of its figures:
//   {"requests": {command: n}, "pings_sent": n, "table": n}
// (requests received by command; _ping requests it started, each counted
// once however many times it is resent). Ends on EOF of stdin or SIGTERM.
const dht = require('dht-rpc')
const readline = require('readline')

const node = dht({ ephemeral: false, bootstrap: [] })
node.on('warning', () => {})
const requests = {}
let pingsSent = 0

const onrequest = node.onrequest.bind(node)
node.onrequest = (type, message, peer) => {
  requests[message.command] = (requests[message.command] || 0) + 1
  return onrequest(type, message, peer)
}
const queryImmediately = node._io.queryImmediately.bind(node._io)
node._io.queryImmediately = (command, ...rest) => {
  if (command === '_ping') pingsSent++
  return queryImmediately(command, ...rest)
}
const query = node._io.query.bind(node._io)
node._io.query = (command, ...rest) => {
  if (command === '_ping') pingsSent++
  return query(command, ...rest)
}

function stop () { node.destroy(); process.exit(0) }

node.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: node.address().port, pid: process.pid }) + '\n')
})
readline.createInterface({ input: process.stdin }).on('line', () => {
  process.stdout.write(JSON.stringify({ requests, pings_sent: pingsSent, table: node.nodes.length }) + '\n')
}).on('close', stop)
process.on('SIGTERM', stop)
