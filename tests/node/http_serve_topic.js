// A hyperswarm 2.15.3 peer that announces a topic and answers every
// connection with a small HTTP response (a service reached by topic).
//
//   node http_serve_topic.js TOPIC_HEX BOOTSTRAP_HOST:PORT
//
// Lines: {"event":"announced"} once the first announce is done,
//        {"event":"connection","type"} per connection. SIGTERM: exit 0.
'use strict'
const hyperswarm = require('hyperswarm')

const key = Buffer.from(process.argv[2], 'hex')
const bootstrap = process.argv[3] ? [process.argv[3]] : []
const BODY = 'hello from node\n'
function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

const swarm = hyperswarm({ bootstrap })
swarm.on('connection', (socket, info) => {
  out({ event: 'connection', type: info.type })
  let request = ''
  let answered = false
  socket.on('error', () => {})
  socket.on('data', (d) => {
    request += d.toString()
    if (!answered && request.includes('\r\n\r\n')) {
      answered = true
      socket.end('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ' +
        BODY.length + '\r\n\r\n' + BODY)
    }
  })
})
swarm.join(key, { lookup: false, announce: true }, () => out({ event: 'announced' }))

let closing = false
function close () {
  if (closing) return
  closing = true
  swarm.destroy(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', close)
process.on('SIGINT', close)
