// Per-datagram mDNS work in @hyperswarm/discovery 2.0.1, timed in-process:
// dns-packet decode + Discovery's own _onmdnsresponse / _onmdnsquery (called
// on a stand-in `this`, no socket), and dns-packet encode of a query.
// Run with NODE_PATH=tests/node/node_modules:
//   node mdns_handle.js ITERATIONS ANSWER_HEX QUERY_HEX
// Prints one JSON line {"answer_us":..., "query_us":..., "encode_query_us":...}
// (best of 5 runs, microseconds per datagram).
'use strict'
const packet = require('dns-packet')
const Discovery = require('@hyperswarm/discovery')({ bootstrap: [], multicast: fakeMdns() }).constructor

function fakeMdns () {
  return { on () {}, destroy () {}, query () {}, response () {} }
}

const n = Number(process.argv[2])
const answer = Buffer.from(process.argv[3], 'hex')
const query = Buffer.from(process.argv[4], 'hex')
const key = Buffer.alloc(32, 0xab)
const name = key.slice(0, 20).toString('hex') + '.hyperswarm.local'

let peers = 0
const topic = {
  id: Buffer.concat([Buffer.from('id='), Buffer.alloc(32, 1)]),
  key,
  _answer: { type: 'SRV', name, data: { target: '0.0.0.0', port: 37591 } },
  _idAnswer: { type: 'TXT', name, data: [Buffer.concat([Buffer.from('id='), Buffer.alloc(32, 1)])] },
  emit () { peers++ }
}
let sent = 0
const self = {
  _domains: new Map([[name, new Set([topic])]]),
  _tld: '.hyperswarm.local',
  _getId: Discovery.prototype._getId,
  mdns: {
    response (r) {
      r.type = 'response'
      r.flags = packet.AUTHORITATIVE_ANSWER
      sent += packet.encode(r).length
    }
  }
}
const rinfo = { address: '127.0.0.1', port: 5353 }

function time (fn) {
  let best = Infinity
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) fn()
    const us = Number(process.hrtime.bigint() - t0) / 1000 / n
    if (us < best) best = us
  }
  return best
}

const answerUs = time(() => Discovery.prototype._onmdnsresponse.call(self, packet.decode(answer), rinfo))
const queryUs = time(() => Discovery.prototype._onmdnsquery.call(self, packet.decode(query), rinfo))
const encodeUs = time(() => packet.encode({ type: 'query', questions: [{ type: 'SRV', name }] }))
if (!peers || !sent) throw new Error('nothing happened')
process.stdout.write(JSON.stringify({ answer_us: answerUs, query_us: queryUs, encode_query_us: encodeUs }) + '\n')
process.exit(0)
