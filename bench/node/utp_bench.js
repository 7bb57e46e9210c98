// utp-native 2.5.3 end of bench/utp.py; prints JSON lines. NODE_PATH=tests/node/node_modules.
//
//   node utp_bench.js recv BUFSIZE              listen on 127.0.0.1, count bytes until 'end'
//   node utp_bench.js send PORT BYTES BUFSIZE   after a "go" line on stdin, connect and send
//
// BUFSIZE 0 keeps the kernel's default socket buffers (as hyperswarm 2 does).
// Times are CLOCK_MONOTONIC seconds (comparable with Python's time.monotonic()).
'use strict'
const utp = require('utp-native')
const readline = require('readline')

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const now = () => Number(process.hrtime.bigint()) / 1e9
const [, , role, ...rest] = process.argv

function buffers (sock, n) {
  if (n > 0) { sock.setRecvBufferSize(n); sock.setSendBufferSize(n) }
}

if (role === 'recv') {
  const bufsize = Number(rest[0])
  const server = utp()
  server.on('connection', (sock) => {
    const t0 = now()
    let bytes = 0
    let last = t0
    let stall = 0
    sock.on('data', (d) => {
      const t = now()
      if (t - last > stall) stall = t - last
      last = t
      bytes += d.length
    })
    sock.on('end', () => {
      out({ event: 'end', bytes, t0, t1: now(), stall })
      sock.end()
    })
    sock.on('error', (err) => out({ event: 'error', code: err.code || null }))
  })
  server.listen(0, '127.0.0.1', () => {
    buffers(server, bufsize)
    out({ event: 'listening', port: server.address().port, pid: process.pid })
  })
} else if (role === 'send') {
  const [port, total, bufsize] = rest.map(Number)
  const server = utp()
  server.bind(0, '127.0.0.1', () => {
    buffers(server, bufsize)
    out({ event: 'ready', pid: process.pid })
  })
  const chunk = Buffer.alloc(65536, 0x61)
  const go = () => {
    const sock = server.connect(port, '127.0.0.1')
    let left = total
    const t0 = now()
    function pump () {
      while (left > 0) {
        const n = Math.min(left, chunk.length)
        left -= n
        if (!sock.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { sock.once('drain', pump); return }
      }
      sock.end()
    }
    sock.on('data', () => {})
    sock.on('error', (err) => out({ event: 'error', code: err.code || null }))
    sock.on('close', () => out({ event: 'done', t0, t1: now() }))
    pump()
  }
  readline.createInterface({ input: process.stdin }).once('line', go)
}
process.on('SIGTERM', () => process.exit(0))
