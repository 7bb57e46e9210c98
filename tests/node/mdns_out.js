// JSON-line output shared by the mDNS Node helpers (mdns_discovery.js,
// mdns_swarm.js): out(obj) prints one line; peerLine(p) is the line for a
// discovery/swarm 'peer' event ("to" is the string "absent" when the peer
// object has no such key, as mDNS peers have none).
'use strict'

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function peerLine (p) {
  return {
    event: 'peer',
    host: p.host,
    port: p.port,
    local: p.local,
    referrer: p.referrer,
    to: 'to' in p ? p.to : 'absent',
    topic: p.topic.toString('hex')
  }
}

module.exports = { out, peerLine }
