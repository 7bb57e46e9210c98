// One or more @hyperswarm/dht 4.0.1 nodes in one process, driven by JSON lines.
//
// argv[2]: JSON config {count=1, bootstrap=["HOST:PORT"], ephemeral=false,
//          host="127.0.0.1", port=0, chain=false}
//   chain: node i>0 bootstraps from node 0 as well as from `bootstrap`.
// Prints {"event":"listening","nodes":[{"port","id"}]} then {"event":"ready"}
// once every node has bootstrapped.
//
// stdin commands (one JSON object per line, all with an "id" echoed back;
// "node" picks the node, default 0):
//   {"cmd":"announce","topic":hex,"port":n|null,"localAddress":"H:P"|null}
//      -> {"event":"announced","id","error","peers":[...]}
//   {"cmd":"unannounce", same fields} -> {"event":"unannounced","id","error"}
//   {"cmd":"lookup","topic":hex,"localAddress":"H:P"|null}
//      -> {"event":"peer",...} per peer, then {"event":"lookup-done","id","error",
//         "peers":[...],"first_ms","total_ms","sent"}
//   {"cmd":"records"} -> {"event":"records","id","counts":[size per node]}
//   {"cmd":"exit"}
'use strict'
const dht = require('@hyperswarm/dht')

const cfg = JSON.parse(process.argv[2] || '{}')
const count = cfg.count || 1
const host = cfg.host || '127.0.0.1'
const nodes = []

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function parse (hp) {
  if (!hp) return undefined
  const i = hp.lastIndexOf(':')
  return { host: hp.slice(0, i), port: Number(hp.slice(i + 1)) }
}

function makeNode (i, bootstrap, cb) {
  const node = dht({ bootstrap, ephemeral: !!cfg.ephemeral, adaptive: false })
  node.sent = 0
  const send = node.socket.send
  node.socket.send = function () { node.sent++; return send.apply(this, arguments) }
  node.on('warning', () => {})
  node.listen(i === 0 ? (cfg.port || 0) : 0, host, () => cb(node))
  return node
}

function peerJson (data, p, local, topic) {
  return {
    topic,
    host: p.host,
    port: p.port,
    local,
    referrer: local ? null : data.node.host + ':' + data.node.port,
    to: data.to ? data.to.host + ':' + data.to.port : null
  }
}

let listening = 0
const boot = [].concat(cfg.bootstrap || [])
function startAll () {
  for (let i = 0; i < count; i++) {
    nodes.push(null)
    const start = (i) => {
      const b = boot.slice()
      if (cfg.chain && i > 0) b.push(host + ':' + nodes[0].address().port)
      makeNode(i, b, (node) => {
        nodes[i] = node
        if (++listening === count) {
          out({ event: 'listening', nodes: nodes.map(n => ({ port: n.address().port, id: n.id.toString('hex') })) })
          let ready = 0
          for (const n of nodes) n.ready(() => { if (++ready === count) out({ event: 'ready' }) })
        }
      })
    }
    if (cfg.chain && i > 0) continue
    start(i)
    if (cfg.chain && i === 0) {
      // wait for node 0 to listen, then start the rest
      const wait = setInterval(() => {
        if (!nodes[0]) return
        clearInterval(wait)
        for (let j = 1; j < count; j++) start(j)
      }, 5)
    }
  }
}
startAll()

function opts (msg) {
  const o = {}
  if (msg.port !== undefined && msg.port !== null) o.port = msg.port
  if (msg.localAddress) o.localAddress = parse(msg.localAddress)
  return o
}

function onCommand (msg) {
  const node = nodes[msg.node || 0]
  const id = msg.id
  if (msg.cmd === 'exit') {
    for (const n of nodes) n.destroy()
    process.exit(0)
  }
  if (msg.cmd === 'records') {
    return out({ event: 'records', id, counts: nodes.map(n => n._peers.size) })
  }
  const topic = Buffer.from(msg.topic, 'hex')
  if (msg.cmd === 'announce' || msg.cmd === 'lookup') {
    const peers = []
    const start = process.hrtime.bigint()
    const sent0 = node.sent
    let first = null
    const stream = msg.cmd === 'announce' ? node.announce(topic, opts(msg)) : node.lookup(topic, opts(msg))
    stream.on('data', (data) => {
      for (const p of (data.localPeers || [])) peers.push(peerJson(data, p, true, msg.topic))
      for (const p of (data.peers || [])) peers.push(peerJson(data, p, false, msg.topic))
      if (first === null && ((data.peers && data.peers.length) || (data.localPeers && data.localPeers.length))) {
        first = Number(process.hrtime.bigint() - start) / 1e6
      }
      if (msg.cmd === 'lookup' && msg.stream) {
        for (const p of peers.splice(0)) out(Object.assign({ event: 'peer', id }, p))
      }
    })
    let done = false
    const finish = (err) => {
      if (done) return
      done = true
      const total = Number(process.hrtime.bigint() - start) / 1e6
      out({
        event: msg.cmd === 'announce' ? 'announced' : 'lookup-done',
        id,
        error: err ? err.message : null,
        peers,
        first_ms: first,
        total_ms: total,
        sent: node.sent - sent0
      })
    }
    stream.on('error', finish)
    stream.on('end', () => finish(null))
    stream.resume()
    return
  }
  if (msg.cmd === 'unannounce') {
    return node.unannounce(topic, opts(msg), (err) => out({ event: 'unannounced', id, error: err ? err.message : null }))
  }
  out({ event: 'error', id, error: 'unknown command ' + msg.cmd })
}

let buf = ''
process.stdin.on('data', (chunk) => {
  buf += chunk
  let i
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i).trim()
    buf = buf.slice(i + 1)
    if (line) onCommand(JSON.parse(line))
  }
})
process.stdin.on('end', () => { for (const n of nodes) n.destroy(); process.exit(0) })
process.on('SIGTERM', () => { for (const n of nodes) n.destroy(); process.exit(0) })
