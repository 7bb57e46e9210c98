// A hypertele-style pipe on hyperswarm 2.15.3: a local TCP port reached by
// topic. One swarm connection per piped TCP connection (hyperswarm 2 has no
// multiplexing), as `twist hyperswarm --expose/--listen` does.
//
//   node tunnel_pipe.js server TOPIC_HEX BOOTSTRAP_HOST:PORT TARGET_PORT
//       announce TOPIC; pipe each incoming swarm connection to 127.0.0.1:TARGET_PORT
//   node tunnel_pipe.js client TOPIC_HEX BOOTSTRAP_HOST:PORT LISTEN_PORT
//       look TOPIC up; pipe each connection accepted on 127.0.0.1:LISTEN_PORT
//       over a new swarm connection to the first peer found
//
// Lines on stdout: {"event":"announced"} (server), {"event":"listening"} and
// {"event":"peer","host":..,"port":..} (client). Runs until killed.
'use strict'
const net = require('net')
const hyperswarm = require('hyperswarm')

const [mode, topicHex, boot, portText] = process.argv.slice(2)
const key = Buffer.from(topicHex, 'hex')
const port = Number(portText)
function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }

function pipeBoth (a, b) {
  a.on('error', () => b.destroy())
  b.on('error', () => a.destroy())
  a.on('close', () => b.destroy())
  b.on('close', () => a.destroy())
  a.pipe(b)
  b.pipe(a)
}

if (mode === 'server') {
  const swarm = hyperswarm({ bootstrap: [boot], maxPeers: 1024, maxServerSockets: Infinity })
  swarm.on('connection', (socket, info) => {
    const target = net.connect(port, '127.0.0.1')
    pipeBoth(socket, target)
  })
  swarm.join(key, { announce: true, lookup: false }, () => out({ event: 'announced' }))
} else if (mode === 'client') {
  let peer = null
  const swarm = hyperswarm({
    bootstrap: [boot],
    maxPeers: 1024,
    // the queue never dials: each local connection dials its own (raw connect)
    validatePeer: (p) => {
      if (!peer) {
        peer = p
        out({ event: 'peer', host: p.host, port: p.port })
      }
      return false
    }
  })
  swarm.join(key, { announce: false, lookup: true })
  const server = net.createServer((local) => {
    if (!peer) { local.destroy(); return }
    local.pause()
    swarm.connect(peer, (err, socket) => {
      if (err) { local.destroy(); return }
      local.resume()
      pipeBoth(local, socket)
    })
  })
  server.listen(port, '127.0.0.1', () => out({ event: 'listening' }))
} else {
  process.stderr.write('usage: tunnel_pipe.js server|client TOPIC_HEX BOOTSTRAP PORT\n')
  process.exit(2)
}
