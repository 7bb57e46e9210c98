// DHT scale, simulated, on Node: N @hyperswarm/dht 4.0.1 (dht-rpc 4.9.6)
// nodes in one process on an in-memory UDP network (dht-rpc takes an
// injected `socket`) and a simulated clock (setTimeout/setInterval replaced
// by a heap of timers; time only moves when the driver moves it), the same
// procedure and the same definitions as bench/dht_scale.py's Python side:
//
//   node tests/node/dht_scale.js --nodes 1000 [--topics 50] [--lookups 200] [--seed 1]
//
// Prints one JSON line with the figures (the keys of bench/dht_scale.py).
'use strict'

// -- the simulated clock (installed before any module makes a timer) ----------

const realSetImmediate = setImmediate
let now = 0 // ms
let seq = 0
const heap = [] // timers ordered by (time, seq)

function less (a, b) { return a.time < b.time || (a.time === b.time && a.seq < b.seq) }
function push (t) {
  heap.push(t)
  let i = heap.length - 1
  while (i > 0) {
    const p = (i - 1) >> 1
    if (!less(heap[i], heap[p])) break
    const x = heap[i]; heap[i] = heap[p]; heap[p] = x; i = p
  }
}
function pop () {
  const top = heap[0]
  const last = heap.pop()
  if (heap.length) {
    heap[0] = last
    let i = 0
    for (;;) {
      const l = 2 * i + 1; const r = l + 1
      let m = i
      if (l < heap.length && less(heap[l], heap[m])) m = l
      if (r < heap.length && less(heap[r], heap[m])) m = r
      if (m === i) break
      const x = heap[i]; heap[i] = heap[m]; heap[m] = x; i = m
    }
  }
  return top
}

class Timer {
  constructor (fn, ms, args, repeat) {
    this.fn = fn
    this.args = args
    this.interval = repeat ? Math.max(1, ms | 0) : null
    this.time = now + Math.max(1, ms | 0)
    this.seq = ++seq
    this.cancelled = false
    push(this)
  }

  unref () { return this }
  ref () { return this }
  hasRef () { return true }
  refresh () { return this }
}

global.setTimeout = (fn, ms, ...args) => new Timer(fn, ms, args, false)
global.setInterval = (fn, ms, ...args) => new Timer(fn, ms, args, true)
global.clearTimeout = global.clearInterval = (t) => { if (t) t.cancelled = true }

// Run the clock for `ms`: every timer due, in order; after each instant, a
// turn of the real event loop so process.nextTick and stream callbacks run.
async function run (ms) {
  const end = now + ms
  while (heap.length) {
    while (heap.length && heap[0].cancelled) pop()
    if (!heap.length || heap[0].time > end) break
    now = heap[0].time
    while (heap.length && heap[0].time <= now) {
      const t = pop()
      if (t.cancelled) continue
      if (t.interval !== null) {
        t.time = now + t.interval
        t.seq = ++seq
        push(t)
      } else {
        t.cancelled = true
      }
      t.fn(...t.args)
    }
    await new Promise((resolve) => realSetImmediate(resolve))
  }
  now = end
}

async function runUntil (pred, ms, step = 50) {
  for (let waited = 0; waited < ms; waited += step) {
    if (pred()) return true
    await run(step)
  }
  return pred()
}

// -- the in-memory UDP network ----------------------------------------------------

const { EventEmitter } = require('events')
const LATENCY = 5 // ms, as the Python side
const sockets = new Map() // "host:port" -> socket
let datagrams = 0

class MemSocket extends EventEmitter {
  constructor (host, port) {
    super()
    this.host = host
    this.port = port
    this.closed = false
    sockets.set(host + ':' + port, this)
  }

  bind (port, addr, cb) {
    if (cb) this.once('listening', cb)
    process.nextTick(() => this.emit('listening'))
  }

  address () { return { address: this.host, family: 'IPv4', port: this.port } }

  send (buf, offset, length, port, host) {
    if (this.closed) return
    datagrams++
    const data = Buffer.from(buf.subarray(offset, offset + length))
    const rinfo = { address: this.host, family: 'IPv4', port: this.port, size: length }
    setTimeout(() => {
      const to = sockets.get(host + ':' + port)
      if (to && !to.closed) to.emit('message', data, rinfo)
    }, LATENCY)
  }

  close () {
    if (this.closed) return
    this.closed = true
    sockets.delete(this.host + ':' + this.port)
    process.nextTick(() => this.emit('close'))
  }

  ref () {}
  unref () {}
}

// -- the procedure ------------------------------------------------------------------

const hyperdht = require('@hyperswarm/dht')

const argv = process.argv.slice(2)
function opt (name, dflt) {
  const i = argv.indexOf('--' + name)
  return i >= 0 ? Number(argv[i + 1]) : dflt
}
const N = opt('nodes', 1000)
const TOPICS = opt('topics', 50)
const LOOKUPS = opt('lookups', 200)
const WARM = opt('warm', 1)
let rnd = opt('seed', 1) >>> 0
function random () { // mulberry32: a seeded choice of nodes and topics
  rnd = (rnd + 0x6D2B79F5) >>> 0
  let t = rnd
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
function choice (list) { return list[Math.floor(random() * list.length)] }
function randomBytes (n) { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = Math.floor(random() * 256); return b }

const PORT = 49737
const BOOTSTRAP_NODES = 3
const REFRESH = 620 // s
function hostOf (i) { const k = i + 1; return `10.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}` }

const nodes = []
let alive = []
const topics = new Map() // topic hex -> announcer index

function make (i, bootstrap) {
  const host = hostOf(i)
  const socket = new MemSocket(host, PORT)
  const node = hyperdht({ bootstrap, socket, id: randomBytes(32) })
  node.on('warning', () => {})
  node.on('error', () => {})
  node.listen(PORT, host)
  nodes.push(node)
  alive.push(i)
  return node
}

function memory () {
  if (global.gc) global.gc()
  return process.memoryUsage()
}

async function build () {
  const boots = []
  for (let i = 0; i < Math.min(BOOTSTRAP_NODES, N); i++) {
    make(i, boots.slice())
    boots.push({ host: hostOf(i), port: PORT })
    await run(1000)
  }
  const batch = Math.max(50, Math.floor(N / 20))
  let i = nodes.length
  while (i < N) {
    for (let j = i; j < Math.min(N, i + batch); j++) make(j, boots)
    i = nodes.length
    await run(5000)
  }
  await run(60000)
}

// Background traffic, as bench/dht_scale.py's --warm: every node walks
// towards a random target, spread over 20 s, then 10 s more.
async function warm () {
  const step = 50
  for (let w = 0; w < WARM; w++) {
    const order = alive.slice()
    for (let k = order.length - 1; k > 0; k--) {
      const j = Math.floor(random() * (k + 1)); const x = order[k]; order[k] = order[j]; order[j] = x
    }
    const perStep = Math.max(1, Math.ceil(order.length / Math.floor(20000 / step)))
    for (let k = 0; k < order.length; k += perStep) {
      for (const i of order.slice(k, k + perStep)) nodes[i].query('_find_node', randomBytes(32), () => {})
      await run(step)
    }
  }
  if (WARM) await run(10000)
}

// @hyperswarm/discovery's schedule: announce, then again 300-600 s after each end.
function announceLoop (node, topic, state) {
  node.announce(topic, { port: 0 }, () => {
    state.cycles++
    if (node.destroyed) return
    setTimeout(() => announceLoop(node, topic, state), 300000 + random() * 300000)
  })
}

async function announce () {
  const candidates = alive.filter((i) => i >= BOOTSTRAP_NODES)
  const states = []
  for (let k = 0; k < TOPICS && candidates.length; k++) {
    const i = candidates.splice(Math.floor(random() * candidates.length), 1)[0]
    const topic = randomBytes(32)
    topics.set(topic.toString('hex'), i)
    const state = { cycles: 0 }
    states.push(state)
    announceLoop(nodes[i], topic, state)
  }
  await runUntil(() => states.every((s) => s.cycles), 60000)
  return states.filter((s) => s.cycles).length
}

function lookup (node, topic, want) {
  const r = { done: false, found: false, hops: null, messages: 0 }
  const depth = new Map() // "host:port" -> depth
  const key = (p) => p.host + ':' + p.port
  const qs = node.lookup(topic)
  const table = qs.table
  const addUnverified = table.addUnverified.bind(table)
  table.addUnverified = (n, referrer) => {
    if (referrer) {
      const d = (depth.get(key(referrer)) || 1) + 1
      const k = key(n)
      const old = depth.get(k)
      if (old === undefined || d < old) depth.set(k, d)
    }
    addUnverified(n, referrer)
  }
  const send = qs._send
  qs._send = function (n, force, isUpdate) {
    const sent = send.call(qs, n, force, isUpdate) // false: already queried
    if (sent && !isUpdate) r.messages++
    return sent
  }
  qs.on('data', (data) => {
    if (r.found) return
    for (const p of data.peers || []) {
      if (p.host === want.host && p.port === want.port) {
        r.found = true
        r.hops = depth.get(key(data.node)) || 1
        return
      }
    }
  })
  qs.on('error', () => {})
  qs.on('end', () => { r.done = true })
  qs.on('close', () => { r.done = true })
  return r
}

function mean (xs) { return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null }

async function lookups (count) {
  const keys = [...topics.keys()].sort()
  const runs = []
  for (let k = 0; k < count; k++) {
    const t = choice(keys)
    const announcer = topics.get(t)
    let i = choice(alive)
    while (i === announcer) i = choice(alive)
    runs.push(lookup(nodes[i], Buffer.from(t, 'hex'), { host: hostOf(announcer), port: PORT }))
  }
  await runUntil(() => runs.every((r) => r.done), 60000)
  const hops = runs.filter((r) => r.found).map((r) => r.hops)
  const msgs = runs.filter((r) => r.done).map((r) => r.messages)
  return {
    lookups: runs.length,
    found: runs.filter((r) => r.found).length,
    unfinished: runs.filter((r) => !r.done).length,
    hops_mean: mean(hops),
    hops_max: hops.length ? Math.max(...hops) : null,
    messages_mean: mean(msgs),
    messages_max: msgs.length ? Math.max(...msgs) : null
  }
}

function kill (fraction) {
  const keep = new Set(topics.values())
  const candidates = alive.filter((i) => !keep.has(i))
  const count = Math.round(fraction * alive.length)
  const dead = new Set()
  while (dead.size < count) dead.add(candidates[Math.floor(random() * candidates.length)])
  for (const i of dead) nodes[i].destroy()
  alive = alive.filter((i) => !dead.has(i))
  return dead.size
}

async function main () {
  const m0 = memory()
  const t0 = Date.now()
  await build()
  await warm()
  const wallBuild = (Date.now() - t0) / 1000
  const announced = await announce()
  const m1 = memory()
  const sizes = alive.map((i) => nodes[i].nodes.length)
  const t1 = Date.now()
  const before = await lookups(LOOKUPS)
  const wallLookups = (Date.now() - t1) / 1000
  const killed = kill(0.3)
  const afterKill = await lookups(LOOKUPS)
  const t2 = Date.now()
  await run(REFRESH * 1000)
  const wallRefresh = (Date.now() - t2) / 1000
  const afterRefresh = await lookups(LOOKUPS)
  process.stdout.write(JSON.stringify({
    impl: 'node',
    nodes: N,
    announced,
    topics: TOPICS,
    warm: WARM,
    table_mean: mean(sizes),
    table_min: Math.min(...sizes),
    table_max: Math.max(...sizes),
    rss_per_node: (m1.rss - m0.rss) / N,
    heap_per_node: (m1.heapUsed - m0.heapUsed) / N,
    killed,
    before,
    after_kill: afterKill,
    after_refresh: afterRefresh,
    wall_build: wallBuild,
    wall_lookups: wallLookups,
    wall_refresh: wallRefresh,
    wall_total: (Date.now() - t0) / 1000,
    clock: now / 1000,
    datagrams
  }) + '\n')
  process.exit(0)
}

main().catch((err) => { console.error(err); process.exit(1) })
