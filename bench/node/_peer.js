// What the hyperswarm 2.15.3 bench peers (connect_peer.js, swarm_lossy_peer.js)
// share: JSON lines, CLOCK_MONOTONIC seconds (comparable with Python's
// time.monotonic()), mDNS off and the two roles once bound (the Node side of
// bench/_peer.py serve_role).
'use strict'
const readline = require('readline')

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const now = () => Number(process.hrtime.bigint()) / 1e9
const isUtp = (socket) => typeof socket.setNoDelay !== 'function'

// mDNS off (its listeners removed once bound), so the peer comes from the DHT
// with a referrer, as a uTP dial needs.
function noMdns (swarm) {
  swarm.on('listening', () => {
    const mdns = swarm.network.discovery.mdns
    mdns.removeAllListeners('query')
    mdns.removeAllListeners('response')
  })
}

// Binds, then: "announce" joins the topic (announce only), calls onAnnounced
// and prints {"event":"announced","ok","port","pid"}; "dial" prints
// {"event":"ready","port","pid"} and on a "go" line on stdin sets
// state.joinedAt and joins (lookup only). SIGTERM exits.
function serveRole (swarm, topic, role, state, onAnnounced) {
  swarm.listen(0, (err) => {
    if (err) return out({ event: 'error', message: String(err) })
    const port = swarm.address().port
    if (role === 'announce') {
      swarm.join(topic, { announce: true, lookup: false }, (err, ok) => {
        if (err) return out({ event: 'error', message: String(err) })
        if (onAnnounced) onAnnounced()
        out({ event: 'announced', ok, port, pid: process.pid })
      })
    } else {
      out({ event: 'ready', port, pid: process.pid })
      readline.createInterface({ input: process.stdin }).once('line', () => {
        state.joinedAt = now()
        swarm.join(topic, { announce: false, lookup: true })
      })
    }
  })
  process.on('SIGTERM', () => process.exit(0))
}

module.exports = { out, now, isUtp, noMdns, serveRole }
