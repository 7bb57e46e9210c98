// A persistent dht-rpc 4.9.6 node on 127.0.0.1 that answers RPCs; prints
// {"port": N, "pid": P} once bound. Run with NODE_PATH=tests/node/node_modules.
const dht = require('dht-rpc')
const node = dht({ ephemeral: false, bootstrap: [] })
node.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: node.address().port, pid: process.pid }) + '\n')
})
process.on('SIGTERM', () => { node.destroy(); process.exit(0) })
