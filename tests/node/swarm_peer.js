// A hyperswarm 2.15.3 peer for the swarm interop tests, driven by JSON lines.
//
//   node swarm_peer.js '<JSON config>'
//
// Config (every key optional):
//   bootstrap   ["HOST:PORT", ...]   DHT bootstrap nodes (default []: no DHT)
//   mdns        true                 false: after binding, the discovery's mDNS
//                                    socket gets no 'query'/'response' listener,
//                                    so mDNS neither answers nor reports peers
//   dedupId     hex (32 bytes)       on every connection write these 32 bytes
//                                    first, read the remote's 32, then call
//                                    info.deduplicate(dedupId, remoteId)
//   greet       text                 written on every connection (after the id)
//   ephemeral, maxPeers, maxClientSockets, maxServerSockets, preferredPort,
//   port, announcePort, announceLocalAddress: hyperswarm options as given;
//   id: hex DHT node id
//
// stdin commands (one JSON object per line; "id", when given, is echoed):
//   {"cmd":"listen"}                      -> {"event":"listening","port"}
//   {"cmd":"join","topic":hex,"announce":bool,"lookup":bool}
//                                         -> {"event":"joined","topic","ok","err"}
//   {"cmd":"leave","topic":hex}           -> {"event":"left","topic"} (onleave)
//   {"cmd":"write","conn":n,"data":text}  writes to connection n
//   {"cmd":"end","conn":n}                half-closes (end) connection n
//   {"cmd":"destroy","conn":n}            destroys connection n
//   {"cmd":"close-tcp"}                   closes the swarm's TCP listener (the
//                                         port then refuses TCP; uTP and DHT stay)
//                                         -> {"event":"tcp-closed"}
//   {"cmd":"connections"}                 -> {"event":"connections","conns":[conn,...]}
//                                         the live sockets that had a 'connection':
//                                         {conn,client,type,duplicate,received (bytes),
//                                          transport,remote,local}
//   {"cmd":"exit"}                        destroy the swarm and exit 0
//
// Event lines (stdout):
//   {"event":"listening","port"}
//   {"event":"peer","host","port","local","referrer":"H:P"|null,"to":"H:P"|null|"absent","topic"}
//   {"event":"updated","topic"}
//   {"event":"connection","conn":n,"client","type","peer":{host,port,local,referrer,topic}|null,
//    "topics":[hex],"transport":"tcp"|"utp" (the socket's own kind; info.type is
//    sticky, 1.4),"remote":{host,port},"local":{host,port},"t":<monotonic s>}
//   {"event":"data","conn","data":text}    {"event":"end","conn"}
//   {"event":"dedup","conn","remote_id":hex,"duplicate":bool}
//   {"event":"disconnection","conn","client","type","duplicate","received" (bytes)}
//   {"event":"socket-error","conn","message"}   {"event":"error","message"}
// "remote" is the socket's remote address as Node reports it (a TCP socket
// accepted on Node's dual-stack '::' listener says "::ffff:127.0.0.1").
// SIGTERM/SIGINT/stdin end: destroy the swarm, print {"event":"closed"}, exit 0.
'use strict'
const hyperswarm = require('hyperswarm')

const cfg = JSON.parse(process.argv[2] || '{}')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const now = () => Number(process.hrtime.bigint()) / 1e9
const hp = (a) => a ? a.host + ':' + a.port : null

const opts = { bootstrap: cfg.bootstrap || [] }
for (const k of ['ephemeral', 'maxPeers', 'maxClientSockets', 'maxServerSockets', 'preferredPort',
  'port', 'announcePort', 'announceLocalAddress']) {
  if (cfg[k] !== undefined && cfg[k] !== null) opts[k] = cfg[k]
}
if (cfg.id) opts.id = Buffer.from(cfg.id, 'hex')
const dedupId = cfg.dedupId ? Buffer.from(cfg.dedupId, 'hex') : null

const swarm = hyperswarm(opts)
const conns = new Map() // n -> { socket, info, received } while open
const bySocket = new WeakMap() // socket -> n
const received = new WeakMap() // socket -> bytes received
let next = 0

function peerJson (p) {
  if (!p) return null
  return {
    host: p.host,
    port: p.port,
    local: p.local,
    referrer: p.referrer ? hp(p.referrer) : null,
    topic: p.topic ? p.topic.toString('hex') : null
  }
}

// a TCP socket has setNoDelay; a utp-native Connection has not
const isUtp = (socket) => typeof socket.setNoDelay !== 'function'

function addresses (socket) {
  if (isUtp(socket)) {
    // remote from the socket; local: the swarm's UDP socket (bound to 0.0.0.0)
    const a = socket.address() || {}
    return {
      remote: { host: socket.remoteAddress, port: socket.remotePort },
      local: { host: a.address, port: a.port }
    }
  }
  return {
    remote: { host: socket.remoteAddress, port: socket.remotePort },
    local: { host: socket.localAddress, port: socket.localPort }
  }
}

function describe (n) {
  const { socket, info, received } = conns.get(n)
  return Object.assign({ conn: n, client: info.client, type: info.type, duplicate: info.duplicate, received,
    transport: isUtp(socket) ? 'utp' : 'tcp' }, addresses(socket))
}

swarm.on('listening', () => {
  if (cfg.mdns === false) {
    const mdns = swarm.network.discovery.mdns
    mdns.removeAllListeners('query')
    mdns.removeAllListeners('response')
  }
  out({ event: 'listening', port: swarm.address().port })
})
swarm.on('peer', (p) => out({
  event: 'peer',
  host: p.host,
  port: p.port,
  local: p.local,
  referrer: p.referrer ? hp(p.referrer) : null,
  to: 'to' in p ? hp(p.to) : 'absent',
  topic: p.topic.toString('hex')
}))
swarm.on('updated', ({ key }) => out({ event: 'updated', topic: key.toString('hex') }))
swarm.on('error', (err) => out({ event: 'error', message: String(err) }))

swarm.on('connection', (socket, info) => {
  const n = next++
  const entry = { socket, info, received: 0 }
  conns.set(n, entry)
  bySocket.set(socket, n)
  out(Object.assign({
    event: 'connection',
    conn: n,
    client: info.client,
    type: info.type,
    peer: peerJson(info.peer),
    topics: info.topics.map((t) => t.toString('hex')),
    transport: isUtp(socket) ? 'utp' : 'tcp',
    t: now()
  }, addresses(socket)))
  let idBuf = dedupId ? Buffer.alloc(0) : null
  socket.on('data', (data) => {
    entry.received += data.length
    received.set(socket, entry.received)
    if (idBuf !== null) {
      idBuf = Buffer.concat([idBuf, data])
      if (idBuf.length < 32) return
      const remoteId = idBuf.subarray(0, 32)
      data = idBuf.subarray(32)
      idBuf = null
      const duplicate = info.deduplicate(dedupId, remoteId)
      out({ event: 'dedup', conn: n, remote_id: remoteId.toString('hex'), duplicate })
      if (!data.length) return
    }
    out({ event: 'data', conn: n, data: data.toString('utf8') })
  })
  socket.on('end', () => out({ event: 'end', conn: n }))
  socket.on('error', (err) => out({ event: 'socket-error', conn: n, message: String(err) }))
  socket.on('close', () => conns.delete(n))
  if (dedupId) socket.write(dedupId)
  if (cfg.greet) socket.write(cfg.greet)
})
swarm.on('disconnection', (socket, info) => {
  const n = bySocket.has(socket) ? bySocket.get(socket) : null
  out({ event: 'disconnection', conn: n, client: info.client, type: info.type, duplicate: info.duplicate,
    received: received.get(socket) || 0 })
})

function onCommand (msg) {
  const id = msg.id
  const reply = (o) => out(id === undefined ? o : Object.assign(o, { id }))
  const c = msg.conn !== undefined ? conns.get(msg.conn) : null
  switch (msg.cmd) {
    case 'listen':
      return swarm.listen(opts.preferredPort || 0, (err) => {
        if (err) reply({ event: 'error', message: String(err) })
      })
    case 'join': {
      const topic = Buffer.from(msg.topic, 'hex')
      return swarm.join(topic, { announce: !!msg.announce, lookup: msg.lookup !== false }, (err, ok) =>
        reply({ event: 'joined', topic: msg.topic, ok: ok === undefined ? null : ok, err: err ? String(err) : null, t: now() }))
    }
    case 'leave':
      return swarm.leave(Buffer.from(msg.topic, 'hex'), () => reply({ event: 'left', topic: msg.topic }))
    case 'write':
      if (c) c.socket.write(msg.data)
      return
    case 'end':
      if (c) c.socket.end()
      return
    case 'destroy':
      if (c) c.socket.destroy()
      return
    case 'close-tcp':
      return swarm.network.tcp.close(() => reply({ event: 'tcp-closed' }))
    case 'connections':
      return reply({ event: 'connections', conns: [...conns.keys()].map(describe) })
    case 'exit':
      return close()
    default:
      reply({ event: 'error', message: 'unknown command ' + msg.cmd })
  }
}

let closing = false
function close () {
  if (closing) return
  closing = true
  setTimeout(() => process.exit(0), 5000).unref()
  swarm.destroy(() => {
    out({ event: 'closed' })
    process.exit(0)
  })
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
process.stdin.on('end', close)
process.on('SIGTERM', close)
process.on('SIGINT', close)
