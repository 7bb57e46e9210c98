// Listen on 0.0.0.0:5353 (shared, like multicast-dns), join 224.0.0.251 on
// 127.0.0.1 and print every datagram as a JSON line:
//   {"event":"packet","from":"127.0.0.1","hex":"...","decoded":<dns-packet.decode,
//    Buffers as {"hex": "..."}>}  (decoded is null, "error" set, when undecodable)
// A {"event":"ready"} line comes first. Used to check our datagrams with the
// Node decoder and to capture Node's datagrams for the test data.
'use strict'
const dgram = require('dgram')
const packet = require('dns-packet')

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function plain (v) {
  if (Buffer.isBuffer(v)) return { hex: v.toString('hex') }
  if (Array.isArray(v)) return v.map(plain)
  if (v && typeof v === 'object') {
    const o = {}
    for (const k of Object.keys(v)) o[k] = plain(v[k])
    return o
  }
  return v
}

const socket = dgram.createSocket({ type: 'udp4', reuseAddr: true })
socket.on('message', (msg, rinfo) => {
  let decoded = null
  let error = null
  try { decoded = plain(packet.decode(msg)) } catch (e) { error = String(e.message) }
  out({ event: 'packet', from: rinfo.address, hex: msg.toString('hex'), decoded, error })
})
socket.bind(5353, () => {
  socket.addMembership('224.0.0.251', '127.0.0.1')
  socket.setMulticastLoopback(true)
  out({ event: 'ready' })
})
process.on('SIGTERM', () => { socket.close(); process.exit(0) })
