// The Node reference of bench/daemon_flood.py: a hyperswarm 2.15.3 swarm
// (@hyperswarm/dht 4.0.1 on utp-native, a TCP listener, mDNS) that is
// persistent (ephemeral: false, as a bootstrap node) and announces a topic,
// on one port, with no bootstrap node (the first node of a network).
//
//   node flood_node.js '{"port": 40000, "hot": "<hex topic>"}'
//
// Prints {"event":"ready","port","pid"} once listening and joined.
// stdin: {"cmd":"stats"} -> {"event":"stats","records","hot","per_address",
//        "log_lines","rss","connections","peers"}: records held in the DHT's record cache (fresh and
//        stale), for the topic "hot", for the announcing IP with the most; lines
//        anything wrote to the console (warnings, errors) so far; the swarm's
//        open connections and the peers it counts against maxPeers.
// SIGTERM/SIGINT/stdin end: destroy the swarm and exit 0.
'use strict'
const hyperswarm = require('hyperswarm')
const crypto = require('crypto')

const cfg = JSON.parse(process.argv[2] || '{}')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

let logLines = 0
for (const k of ['log', 'warn', 'error', 'info']) {
  const orig = console[k].bind(console)
  console[k] = (...args) => { logLines++; orig(...args) }
}
process.on('warning', () => { logLines++ })

const swarm = hyperswarm({ bootstrap: [], ephemeral: false, maxPeers: 256 })
swarm.on('error', (err) => { logLines++; process.stderr.write(String(err) + '\n') })
swarm.on('connection', (socket) => {
  socket.on('error', () => {}) // kept open, as the daemon's tunnel keeps a connection
})

function dht () { return swarm.network.discovery.dht }

function stats () {
  const cache = dht()._peers
  const perIp = new Map()
  let hot = 0
  for (const store of [cache._fresh, cache._stale]) {
    for (const [name, set] of store.records) {
      if (name === cfg.hot) hot += set.list.length
      if (name.includes('@')) continue
      for (const r of set.list) {
        const ip = r.record.slice(0, 4).join('.')
        perIp.set(ip, (perIp.get(ip) || 0) + 1)
      }
    }
  }
  let largest = 0
  for (const n of perIp.values()) largest = Math.max(largest, n)
  return {
    event: 'stats',
    records: cache.size,
    hot,
    per_address: largest,
    log_lines: logLines,
    rss: process.memoryUsage().rss,
    connections: swarm.connections.size,
    peers: swarm.peers
  }
}

swarm.listen(cfg.port || 0, (err) => {
  if (err) { out({ event: 'error', message: String(err) }); process.exit(1) }
  const topic = crypto.createHash('sha256').update('daemon flood').digest()
  swarm.join(topic, { announce: true, lookup: false }, () => {})
  out({ event: 'ready', port: swarm.address().port, pid: process.pid })
})

let buf = ''
process.stdin.on('data', (d) => {
  buf += d
  let i
  while ((i = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, i)
    buf = buf.slice(i + 1)
    if (!line.trim()) continue
    const cmd = JSON.parse(line)
    if (cmd.cmd === 'stats') out(stats())
  }
})

function bye () { swarm.destroy(() => process.exit(0)); setTimeout(() => process.exit(0), 2000).unref() }
process.stdin.on('end', bye)
process.on('SIGTERM', bye)
process.on('SIGINT', bye)
