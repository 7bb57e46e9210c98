// hyperswarm 2.15.3 end of bench/connect.py; prints JSON lines. NODE_PATH=tests/node/node_modules.
//
//   node connect_peer.js '{"role":"announce"|"dial","topic":hex,"bootstrap":"HOST:PORT","utp":bool,"size":n}'
//
// announce: bind, join the topic (announce, no lookup); with "utp" close the
//   TCP listener once announced (the port then refuses TCP, so a dialler gets
//   uTP through a holepunch); prints {"event":"announced","ok","port"}. Counts
//   what each connection brings until its end and reports the first that
//   brought any: {"event":"received","bytes","t0" (connection),"t1" (end),"type"}.
// dial: bind, print {"event":"ready","port","pid"}; on a "go" line on stdin, t0 = now,
//   join the topic (lookup only); on the first connection print
//   {"event":"connected","t0","t1","type"} and write "size" bytes in 64 KiB
//   writes (respecting backpressure), then end: {"event":"sent","t"}.
// mDNS is off on both (its listeners removed once bound), so the peer comes
// from the DHT with a referrer, as a uTP dial needs. Times are CLOCK_MONOTONIC
// seconds (comparable with Python's time.monotonic()).
'use strict'
const hyperswarm = require('hyperswarm')
const { out, now, isUtp, noMdns, serveRole } = require('./_peer')

const cfg = JSON.parse(process.argv[2])
const topic = Buffer.from(cfg.topic, 'hex')

const swarm = hyperswarm({ bootstrap: [cfg.bootstrap] })
let first = true
const state = { joinedAt: null }
noMdns(swarm)

let reported = false
swarm.on('connection', (socket, info) => {
  socket.on('error', () => {})
  const type = isUtp(socket) ? 'utp' : 'tcp'
  if (cfg.role === 'announce') {
    // every connection counts; the first that brought bytes is reported (a
    // dial attempt that lost the race may have been accepted first)
    const t0 = now()
    let bytes = 0
    socket.on('data', (d) => { bytes += d.length })
    socket.on('end', () => {
      if (bytes && !reported) {
        reported = true
        out({ event: 'received', bytes, t0, t1: now(), type })
      }
      socket.end()
    })
    return
  }
  if (!first) return
  first = false
  out({ event: 'connected', t0: state.joinedAt, t1: now(), type })
  const chunk = Buffer.alloc(65536, 0x61)
  let left = cfg.size
  function pump () {
    while (left > 0) {
      const n = Math.min(left, chunk.length)
      left -= n
      if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { socket.once('drain', pump); return }
    }
    socket.end()
    out({ event: 'sent', t: now() })
  }
  socket.on('data', () => {})
  pump()
})

serveRole(swarm, topic, cfg.role, state, () => { if (cfg.utp) swarm.network.tcp.close() })
