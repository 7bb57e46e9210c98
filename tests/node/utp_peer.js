// A utp-native 2.5.3 peer for the uTP interop tests; prints JSON lines.
//
//   node utp_peer.js listen PORT MODE        (PORT 0 = any; prints {"event":"listening","port":P})
//   node utp_peer.js connect HOST PORT MODE
//
// MODE:
//   sink         hash everything received; at 'end' print {"event":"end","bytes":N,"sha256":H}
//                and end() our side. A connecting sink first writes "!" (libutp acceptors
//                cannot speak before the initiator's first DATA).
//   source:N     write N random bytes in 64 KiB chunks (an acceptor waits for the first
//                data), then end(); prints {"event":"sent","bytes":N,"sha256":H}; also sinks.
//   hold         accept/connect and keep the connection; print data sizes.
// Every connection prints 'connect', 'finish', 'close' and 'error' (with err.code) events.
// stdin JSON commands: {"cmd":"destroy"}, {"cmd":"exit"}, {"cmd":"write","hex":...}, {"cmd":"end"}.
'use strict'
const utp = require('utp-native')
const crypto = require('crypto')
const readline = require('readline')

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const [, , role, ...rest] = process.argv
let conns = []

function handle (sock, mode, accepted) {
  conns.push(sock)
  const h = crypto.createHash('sha256')
  let bytes = 0
  let started = false
  const [kind, arg] = mode.split(':')
  sock.on('connect', () => out({ event: 'connect' }))
  sock.on('data', (d) => {
    h.update(d)
    bytes += d.length
    if (kind === 'hold') out({ event: 'data', bytes: d.length, hex: d.length <= 64 ? d.toString('hex') : undefined })
    if (kind === 'source' && accepted && !started) { started = true; source(sock, Number(arg)) }
  })
  sock.on('end', () => {
    out({ event: 'end', bytes, sha256: h.digest('hex') })
    if (kind !== 'hold') sock.end()
  })
  sock.on('finish', () => out({ event: 'finish' }))
  sock.on('error', (err) => out({ event: 'error', code: err.code || null, message: String(err.message) }))
  sock.on('close', () => out({ event: 'close' }))
  if (kind === 'source' && !accepted) { started = true; source(sock, Number(arg)) }
  if (kind === 'sink' && !accepted) sock.write('!')
}

function source (sock, n) {
  const h = crypto.createHash('sha256')
  let left = n
  const chunk = 65536
  function pump () {
    while (left > 0) {
      const len = Math.min(chunk, left)
      const buf = crypto.randomBytes(len)
      h.update(buf)
      left -= len
      if (!sock.write(buf)) { sock.once('drain', pump); return }
    }
    out({ event: 'sent', bytes: n, sha256: h.digest('hex') })
    sock.end()
  }
  pump()
}

const sockOpts = process.env.UTP_RCVBUF ? Number(process.env.UTP_RCVBUF) : 0
let server
if (role === 'listen') {
  const [port, mode] = rest
  server = utp()
  server.on('connection', (sock) => {
    out({ event: 'connection', remotePort: sock.remotePort, remoteAddress: sock.remoteAddress })
    handle(sock, mode, true)
  })
  server.listen(Number(port), '127.0.0.1', () => {
    if (sockOpts) server.setRecvBufferSize(sockOpts)
    out({ event: 'listening', port: server.address().port })
  })
} else if (role === 'connect') {
  const [host, port, mode] = rest
  server = utp()
  server.bind(0, '127.0.0.1', () => {})
  const sock = server.connect(Number(port), host)
  server.once('listening', () => {
    if (sockOpts) server.setRecvBufferSize(sockOpts)
    out({ event: 'bound', port: server.address().port })
  })
  handle(sock, mode, false)
} else {
  console.error('usage: utp_peer.js listen PORT MODE | connect HOST PORT MODE')
  process.exit(2)
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch (e) { return }
  if (cmd.cmd === 'exit') process.exit(0)
  for (const s of conns) {
    if (cmd.cmd === 'destroy') s.destroy()
    if (cmd.cmd === 'end') s.end()
    if (cmd.cmd === 'write') s.write(Buffer.from(cmd.hex, 'hex'))
  }
})
process.on('SIGTERM', () => process.exit(0))
