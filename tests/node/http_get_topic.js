// A hyperswarm 2.15.3 peer that looks a topic up, connects to the first
// peer and does an HTTP GET over the raw stream.
//
//   node http_get_topic.js TOPIC_HEX BOOTSTRAP_HOST:PORT
//
// Lines: {"event":"connected","type":..}, then
//        {"event":"response","body":<the whole response as text>}; exits 0.
'use strict'
const hyperswarm = require('hyperswarm')

const key = Buffer.from(process.argv[2], 'hex')
const bootstrap = process.argv[3] ? [process.argv[3]] : []
function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

const swarm = hyperswarm({ bootstrap, multiplex: false })
let done = false
swarm.on('connection', (socket, info) => {
  if (done) { socket.destroy(); return }
  done = true
  out({ event: 'connected', type: info.type })
  const chunks = []
  socket.on('data', (d) => chunks.push(d))
  socket.on('error', (e) => out({ event: 'error', error: String(e) }))
  socket.on('end', () => {
    out({ event: 'response', body: Buffer.concat(chunks).toString() })
    swarm.destroy(() => process.exit(0))
    setTimeout(() => process.exit(0), 2000).unref()
  })
  socket.write('GET / HTTP/1.0\r\nHost: topic\r\n\r\n')
})
swarm.join(key, { lookup: true, announce: false })
setTimeout(() => { out({ event: 'timeout' }); process.exit(1) }, 60000).unref()
