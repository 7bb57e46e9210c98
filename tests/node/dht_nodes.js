// N dht-rpc 4.9.6 nodes in one process, driven by JSON lines on stdin.
//
//   node dht_nodes.js '{"count": 3, "bootstrap": ["127.0.0.1:4000"], "ephemeral": false,
//                       "chain": false}'
//
// chain: node 0 has no bootstrap, nodes 1.. bootstrap from node 0 (plus `bootstrap`).
// Prints {"ready": true, "nodes": [{"id": hex, "port": n}]} once every node is ready.
// Commands (each answered with one line carrying the same "tag"):
//   {"op": "ping", "i": 0, "host": h, "port": p}     -> {id, to: {host, port}} or {error}
//   {"op": "find", "i": 0, "targets": [hex...]}      -> {results: [[responder id hex...]...]}
//   {"op": "table", "i": 0}                          -> {ids: [hex...], nodes: [{id, host, port, to}]}
//                                                      (to: the address the node's last message was sent to)
//   {"op": "put", "i": 0, "target": hex, "value": hex} -> queryAndUpdate('kv') {replies: n}
//   {"op": "get", "i": 0, "target": hex}             -> query('kv') {values: [[id hex, value hex]...]}
//   {"op": "holepunch", "i": 0, "host": h, "port": p, "referrer": {host, port}} -> {ok} or {error}
// Every node serves 'kv': UPDATE stores value under target, QUERY returns it.
const dht = require('dht-rpc')
const peers = require('ipv4-peers')

const opts = JSON.parse(process.argv[2] || '{}')
const count = opts.count || 1
const nodes = []

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function parse (s) {
  const [host, port] = s.split(':')
  return { host, port: Number(port) }
}

function start (i, bootstrap) {
  return new Promise((resolve) => {
    const node = dht({ ephemeral: !!opts.ephemeral, bootstrap })
    node.on('warning', () => {})
    const store = new Map()
    node.command('kv', {
      update (q, cb) { store.set(q.target.toString('hex'), q.value); cb(null, null) },
      query (q, cb) { cb(null, store.get(q.target.toString('hex')) || null) }
    })
    node.listen(0, '127.0.0.1', () => {
      node.ready(() => resolve(node))
    })
  })
}

async function main () {
  const base = (opts.bootstrap || []).map(parse)
  for (let i = 0; i < count; i++) {
    let bootstrap = base
    if (opts.chain) bootstrap = i === 0 ? base : base.concat([{ host: '127.0.0.1', port: nodes[0].address().port }])
    // one at a time: each node is ready before the next one starts
    nodes.push(await start(i, bootstrap))
  }
  out({ ready: true, nodes: nodes.map(n => ({ id: n.id.toString('hex'), port: n.address().port })) })
}

function find (node, target) {
  return new Promise((resolve) => {
    node.query('_find_node', Buffer.from(target, 'hex'), (err, res) => {
      if (err) return resolve({ error: err.message })
      resolve(res.filter(r => r.node.id).map(r => r.node.id.toString('hex')))
    })
  })
}

async function handle (cmd) {
  const node = nodes[cmd.i || 0]
  if (cmd.op === 'ping') {
    node._io.query('_ping', null, null, { host: cmd.host, port: cmd.port }, (err, res) => {
      if (err) return out({ tag: cmd.tag, error: err.message })
      const to = res.to && res.to.length === 6 ? peers.decode(res.to)[0] : null
      out({ tag: cmd.tag, id: res.id ? res.id.toString('hex') : null, to })
    })
  } else if (cmd.op === 'find') {
    const results = []
    const par = cmd.parallel || 5
    for (let j = 0; j < cmd.targets.length; j += par) {
      results.push(...await Promise.all(cmd.targets.slice(j, j + par).map(t => find(node, t))))
    }
    out({ tag: cmd.tag, results })
  } else if (cmd.op === 'holepunch') {
    node.holepunch({ host: cmd.host, port: cmd.port, referrer: cmd.referrer }, (err, res) => {
      if (err) return out({ tag: cmd.tag, error: err.message })
      out({ tag: cmd.tag, ok: true, id: res.id ? res.id.toString('hex') : null })
    })
  } else if (cmd.op === 'put') {
    node.queryAndUpdate('kv', Buffer.from(cmd.target, 'hex'), Buffer.from(cmd.value, 'hex'), (err, res) => {
      if (err) return out({ tag: cmd.tag, error: err.message })
      out({ tag: cmd.tag, replies: res.length })
    })
  } else if (cmd.op === 'get') {
    node.query('kv', Buffer.from(cmd.target, 'hex'), (err, res) => {
      if (err) return out({ tag: cmd.tag, error: err.message })
      out({ tag: cmd.tag, values: res.filter(r => r.value).map(r => [r.node.id.toString('hex'), r.value.toString('hex')]) })
    })
  } else if (cmd.op === 'table') {
    const decodeTo = (to) => (to && to.length === 6 ? peers.decode(to)[0] : null)
    out({
      tag: cmd.tag,
      ids: node.getNodes().map(n => n.id.toString('hex')),
      nodes: node.nodes.toArray().map(n => ({ id: n.id.toString('hex'), host: n.host, port: n.port, to: decodeTo(n.to) }))
    })
  }
}

let buf = ''
process.stdin.on('data', (d) => {
  buf += d
  let idx
  while ((idx = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, idx)
    buf = buf.slice(idx + 1)
    if (line.trim()) handle(JSON.parse(line))
  }
})

function stop () {
  for (const n of nodes) n.destroy()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)

main()
