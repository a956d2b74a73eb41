// A Node.js worker for Overture's remote tasks over HTTP, with nothing but Node's own
// `fetch` (Node.js 18+, no npm package):
//
//   node http-worker.mjs --api http://127.0.0.1:8080 --queue payments
//
// It speaks the HTTP half of the task protocol (docs/protocol.md, "Over HTTP") against
// Overture's HTTP API (`overture serve`, or `overture run --http`):
//
// - POST /tasks/claim, a long poll: up to one attempt per free slot, each leased to this
//   worker for --lease seconds;
// - while an attempt runs, POST /tasks/{id}/heartbeat every third of the lease;
// - POST /tasks/{id}/complete with the handler's output, or /fail with the error's type,
//   message and whether it is retryable (the API builds the result event);
// - a 404 or 409 means the attempt is not ours any more (its lease ran out and another
//   worker took it, or the engine ended it): drop it and move on;
// - SIGTERM (or SIGINT): stop claiming (the long poll in flight is aborted), let the
//   running attempts finish, exit 0.
//
// It prints one JSON line per thing it does. A process calls its tasks like any task:
// `await ctx.call("payment.authorize", {...}, queue="payments")`.

import { hostname } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'

/** Throw it from a task to fail the attempt; `retryable: false` ends the task at once. */
export class TaskError extends Error {
  constructor (message, { type = 'TaskError', retryable = true } = {}) {
    super(message)
    this.name = type
    this.retryable = retryable
  }
}

// The tasks this worker serves, by name: (input, context) -> output (any JSON). The
// context has the attempt number, the idempotency key (key every side effect by it), the
// deadline and an AbortSignal that fires when the attempt is lost (a heartbeat's 404/409).
const handlers = {
  // authorizes a payment (a real one would call the payment provider with the key)
  'payment.authorize': async (input, { idempotencyKey }) => {
    if (typeof input?.order_id !== 'string') {
      throw new TaskError('the input has no order_id', { type: 'BadInput', retryable: false })
    }
    return { order_id: input.order_id, authorization: `AUTH-${idempotencyKey}`, approved: true }
  },
  // declines every payment: a failure that trying again cannot help
  'payment.decline': async (input) => {
    throw new TaskError(`card for ${input?.order_id} declined`, { type: 'CardDeclined', retryable: false })
  },
  // answers with its input: a smoke test of the round trip
  echo: async (input) => input,
  // takes `seconds` seconds (heartbeating meanwhile), then answers with its input
  sleep: async (input, { signal }) => {
    await sleep((input?.seconds ?? 1) * 1000, undefined, { signal })
    return { slept: input?.seconds ?? 1, order_id: input?.order_id }
  },
  // always fails, retryably: the engine's retry policy decides what happens next
  unavailable: async () => {
    throw new Error('the service is unavailable')
  }
}

const { values } = parseArgs({
  options: {
    api: { type: 'string', default: process.env.OVERTURE_API ?? 'http://127.0.0.1:8080' },
    queue: { type: 'string', multiple: true, default: ['default'] },
    worker: { type: 'string', default: `node-${hostname()}-${process.pid}` },
    concurrency: { type: 'string', default: '4' },
    lease: { type: 'string', default: '30' }, // seconds
    wait: { type: 'string', default: '20' } // seconds of each claim's long poll
  }
})
const api = values.api.replace(/\/+$/, '')
const worker = values.worker
const concurrency = Number(values.concurrency)
const lease = Number(values.lease)
const wait = Number(values.wait)
if (!(concurrency >= 1 && lease >= 1 && wait >= 0)) {
  console.error('error: --concurrency and --lease must be at least 1, --wait at least 0')
  process.exit(2)
}

const log = (line) => process.stdout.write(JSON.stringify(line) + '\n')
const stopping = new AbortController() // aborts the long poll in flight on SIGTERM
const running = new Set() // the promises of the attempts being run

/** POST a JSON body; the status and the parsed answer (network errors are thrown). */
async function post (path, body, signal) {
  const response = await fetch(api + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal
  })
  const text = await response.text()
  return { status: response.status, body: text ? JSON.parse(text) : null }
}

const taskPath = (id, action) => `/tasks/${encodeURIComponent(id)}/${action}`

/** Send an answer until the API has it: an answer sent twice is harmless (the first
 * result of an attempt wins), so a network error or a 503 is retried. */
async function answer (id, action, body) {
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      const reply = await post(taskPath(id, action), { worker, ...body })
      if (reply.status < 500) return reply
      log({ event: 'retrying', id, action, status: reply.status, error: reply.body?.error })
    } catch (err) {
      log({ event: 'retrying', id, action, error: String(err.message ?? err) })
    }
    await sleep(delay)
  }
}

/** Run one claimed attempt: heartbeat while the handler runs, then complete or fail. */
async function run ({ id, request }) {
  const data = request.data
  const lost = new AbortController() // the attempt is not ours any more
  const beat = setInterval(async () => {
    try {
      const reply = await post(taskPath(id, 'heartbeat'), { worker, lease })
      if (reply.status === 404 || reply.status === 409) {
        log({ event: 'lost', id, status: reply.status, error: reply.body?.error })
        lost.abort()
      }
    } catch (err) { // the next beat tries again; the lease outlasts a few misses
      log({ event: 'heartbeat failed', id, error: String(err.message ?? err) })
    }
  }, (lease * 1000) / 3)
  log({ event: 'claimed', id, task: data.task, attempt: data.attempt })
  let outcome
  try {
    const handler = handlers[data.task]
    if (!handler) {
      throw new TaskError(`this worker has no handler for task ${data.task}`, { type: 'UnknownTask', retryable: false })
    }
    const output = await handler(data.input, {
      attempt: data.attempt,
      idempotencyKey: data.idempotency_key,
      deadline: data.deadline,
      request,
      signal: lost.signal
    })
    outcome = ['complete', { output: output ?? null }]
  } catch (err) {
    outcome = ['fail', {
      error: { type: err?.name || 'Error', message: String(err?.message ?? err) },
      retryable: err?.retryable !== false
    }]
  } finally {
    clearInterval(beat)
  }
  if (lost.signal.aborted) return // another worker has it now, or the engine ended it
  const [action, body] = outcome
  const reply = await answer(id, action, body)
  if (reply.status === 200) {
    log({ event: action === 'complete' ? 'completed' : 'failed', id, ...body })
  } else { // 404 / 409: the attempt is over or not ours; nothing to do but move on
    log({ event: 'dropped', id, status: reply.status, error: reply.body?.error })
  }
}

async function claimLoop () {
  while (!stopping.signal.aborted) {
    if (running.size >= concurrency) {
      await Promise.race(running) // a slot frees up
      continue
    }
    let reply
    try {
      reply = await post('/tasks/claim', {
        worker, queues: values.queue, max: concurrency - running.size, lease, wait
      }, stopping.signal)
    } catch (err) {
      if (stopping.signal.aborted) break
      log({ event: 'claim failed', error: String(err.message ?? err) })
      await sleep(1000)
      continue
    }
    if (reply.status !== 200) {
      log({ event: 'claim refused', status: reply.status, error: reply.body?.error })
      await sleep(1000)
      continue
    }
    for (const task of reply.body.tasks) {
      const done = run(task).catch((err) => log({ event: 'error', id: task.id, error: String(err) }))
      running.add(done)
      done.finally(() => running.delete(done))
    }
  }
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    log({ event: 'stopping', running: running.size })
    stopping.abort()
  })
}
log({ event: 'running', worker, queues: values.queue, api })
await claimLoop()
await Promise.allSettled(running)
log({ event: 'stopped' })
