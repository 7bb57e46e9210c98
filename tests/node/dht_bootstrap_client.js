// A dht-rpc 4.9.6 node that bootstraps from argv[2] ("HOST:PORT") and then
// prints one JSON line: its own id and every node in its routing table.
// Stays up (answering RPCs) until SIGTERM.
const dht = require('dht-rpc')
const [host, port] = process.argv[2].split(':')
const node = dht({ ephemeral: false, bootstrap: [{ host, port: Number(port) }] })
node.listen(0, '127.0.0.1')
node.once('ready', () => {
  const nodes = node.nodes.toArray().map(n => ({ id: n.id.toString('hex'), host: n.host, port: n.port }))
  process.stdout.write(JSON.stringify({ ready: true, id: node.id.toString('hex'), port: node.address().port, nodes }) + '\n')
})
process.stdin.on('data', () => {
  const nodes = node.nodes.toArray().map(n => ({ id: n.id.toString('hex'), host: n.host, port: n.port }))
  process.stdout.write(JSON.stringify({ nodes }) + '\n')
})
process.on('SIGTERM', () => { node.destroy(); process.exit(0) })
