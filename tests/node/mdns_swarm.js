// A hyperswarm 2.15.3 swarm with bootstrap [] (so mDNS is its only
// discovery), joined to one topic, for the mDNS interop tests.
//
//   node mdns_swarm.js TOPIC_HEX [--announce] [--no-lookup]
//
// Lines: {"event":"listening","port":<the swarm's bound port>}
//        {"event":"joined","ok":<onjoin's second argument>}
//        {"event":"peer","host","port","local","referrer","to","topic"}
// Connections are never dialled (maxClientSockets: 0), so only discovery is
// observed. SIGTERM destroys the swarm and exits 0.
'use strict'
const { out, peerLine } = require('./mdns_out')
const hyperswarm = require('hyperswarm')

const args = process.argv.slice(2)
const key = Buffer.from(args[0], 'hex')
if (key.length !== 32) throw new Error('TOPIC_HEX must be 64 hex characters')
const announce = args.includes('--announce')
const lookup = !args.includes('--no-lookup')

const swarm = hyperswarm({ bootstrap: [], maxClientSockets: 0 })
swarm.on('listening', () => out({ event: 'listening', port: swarm.address().port }))
swarm.on('peer', (p) => out(peerLine(p)))
swarm.join(key, { announce, lookup }, (err, ok) => out({ event: 'joined', ok, err: err ? String(err) : null }))

let closing = false
function close () {
  if (closing) return
  closing = true
  swarm.destroy(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', close)
process.on('SIGINT', close)
