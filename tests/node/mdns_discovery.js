// One @hyperswarm/discovery 2.0.1 Topic, mDNS only (bootstrap: []), for the
// mDNS interop tests. Prints JSON lines on stdout.
//
//   node mdns_discovery.js TOPIC_HEX [--announce PORT] [--lookup]
//
// Without --announce the topic is lookup-only (discovery.lookup); with it the
// topic announces PORT (discovery.announce) and also looks up with --lookup.
// Lines: {"event":"ready","id":<hex of the topic's 35-byte TXT id>,"domain":...}
//        {"event":"peer","host","port","local","referrer","to","topic"}
//        ("to" is the string "absent" when the peer object has no such key).
// Stdin JSON lines: {"cmd":"update"} re-queries now (topic.update());
//                   {"cmd":"destroy"} destroys the discovery and exits 0.
// SIGTERM does the same as "destroy".
'use strict'
const { out, peerLine } = require('./mdns_out')
const discovery = require('@hyperswarm/discovery')
const readline = require('readline')

const args = process.argv.slice(2)
const key = Buffer.from(args[0], 'hex')
if (key.length !== 32) throw new Error('TOPIC_HEX must be 64 hex characters')
let port = 0
let lookup = false
for (let i = 1; i < args.length; i++) {
  if (args[i] === '--announce') port = Number(args[++i])
  else if (args[i] === '--lookup') lookup = true
  else throw new Error('unknown argument ' + args[i])
}

const d = discovery({ bootstrap: [] })
d.mdns.on('warning', (err) => out({ event: 'warning', message: String(err && err.message) }))
const topic = port ? d.announce(key, { port, lookup }) : d.lookup(key)

topic.on('peer', (p) => out(peerLine(p)))

d.mdns.once('ready', () => {
  out({ event: 'ready', id: topic.id.toString('hex'), domain: d._domain(key) })
})

let closing = false
function close () {
  if (closing) return
  closing = true
  d.destroy()
  d.once('close', () => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}

process.on('SIGTERM', close)
process.on('SIGINT', close)
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let msg
  try { msg = JSON.parse(line) } catch (e) { return }
  if (msg.cmd === 'update') topic.update()
  else if (msg.cmd === 'destroy') close()
})
