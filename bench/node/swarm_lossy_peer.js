// hyperswarm 2.15.3 end of bench/swarm_lossy.py; prints JSON lines. NODE_PATH=tests/node/node_modules.
//
//   node swarm_lossy_peer.js '{"role":"announce"|"dial","topic":hex,"bootstrap":"HOST:PORT",
//                               "announcePort":n,"size":n,"echo":n}'
//
// announce: bind, join the topic (announce only) announcing "announcePort" (the
//   lossy relay's port), print {"event":"announced","port"}. On the first
//   connection: hash what arrives, echo its first "echo" bytes back as they
//   come, print {"event":"progress","bytes"} every second, and at its end
//   {"event":"received","bytes","sha256","t0" (connection),"t1" (end),"type"},
//   then end our side.
// dial: bind, print {"event":"ready","port"}; on a "go" line on stdin join the
//   topic (lookup only); on the first connection (never redialled) print
//   {"event":"connected","t0","t1","type"}, write "size" bytes (a random MiB
//   over and over, 64 KiB writes, respecting backpressure), end, print
//   {"event":"sent","bytes","sha256"}, and once the peer ended print
//   {"event":"done","echo" (bytes),"echo_ok"}; {"event":"echo","bytes"} every
//   second until then.
// mDNS is off on both (its listeners removed once bound), so the peer comes
// from the DHT with a referrer, as a uTP dial needs. Times are CLOCK_MONOTONIC.
'use strict'
const hyperswarm = require('hyperswarm')
const crypto = require('crypto')
const { out, now, isUtp, noMdns, serveRole } = require('./_peer')

const cfg = JSON.parse(process.argv[2])
const topic = Buffer.from(cfg.topic, 'hex')

const opts = { bootstrap: [cfg.bootstrap] }
if (cfg.role === 'announce') opts.announcePort = cfg.announcePort
const swarm = hyperswarm(opts)
let first = true
const state = { joinedAt: null }
noMdns(swarm)

swarm.on('connection', (socket, info) => {
  socket.on('error', (err) => out({ event: 'socket-error', message: String(err) }))
  if (!first) return
  first = false
  const type = isUtp(socket) ? 'utp' : 'tcp'
  if (cfg.role === 'announce') {
    const t0 = now()
    const hash = crypto.createHash('sha256')
    let bytes = 0
    let echoLeft = cfg.echo
    const timer = setInterval(() => out({ event: 'progress', bytes }), 1000)
    socket.on('data', (d) => {
      hash.update(d)
      bytes += d.length
      if (echoLeft > 0) {
        const part = Buffer.from(d.subarray(0, echoLeft))
        echoLeft -= part.length
        socket.write(part)
      }
    })
    socket.on('end', () => {
      clearInterval(timer)
      out({ event: 'received', bytes, sha256: hash.digest('hex'), t0, t1: now(), type })
      socket.end()
    })
    socket.on('close', () => clearInterval(timer))
    return
  }
  info.reconnect(false)
  out({ event: 'connected', t0: state.joinedAt, t1: now(), type })
  const block = crypto.randomBytes(1 << 20)
  const sent = crypto.createHash('sha256')
  const echo = crypto.createHash('sha256')
  let echoed = 0
  let left = cfg.size
  let off = 0
  socket.on('data', (d) => { echo.update(d); echoed += d.length })
  const timer = setInterval(() => out({ event: 'echo', bytes: echoed }), 1000)
  socket.on('close', () => clearInterval(timer))
  socket.on('end', () => {
    clearInterval(timer)
    const want = crypto.createHash('sha256').update(block.subarray(0, Math.min(cfg.echo, cfg.size))).digest('hex')
    out({ event: 'done', echo: echoed, echo_ok: echo.digest('hex') === want })
  })
  function pump () {
    while (left > 0) {
      const n = Math.min(left, 65536)
      const chunk = block.subarray(off, off + n)
      off = (off + n) % block.length
      left -= n
      sent.update(chunk)
      if (!socket.write(chunk)) { socket.once('drain', pump); return }
    }
    socket.end()
    out({ event: 'sent', bytes: cfg.size, sha256: sent.digest('hex') })
  }
  pump()
})

serveRole(swarm, topic, cfg.role, state)
