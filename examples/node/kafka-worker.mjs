// A Node.js worker for Overture's remote tasks over Kafka (see overture-kafka.mjs).
//
//   npm ci                      # once, in examples/node
//   node kafka-worker.mjs --brokers 127.0.0.1:9092 --namespace overture --queue notify
//
// It serves the tasks below on one queue and prints one JSON line per thing it does.
// A process calls them like any task: `await ctx.call("notify.rider", {...}, queue="notify")`.

import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { TaskError, runKafkaWorker } from './overture-kafka.mjs'

const handlers = {
  // the ridesharing example's rider notification (a real one would call a push service)
  'notify.rider': async (input, { idempotencyKey }) => {
    if (typeof input?.rider_id !== 'string') {
      throw new TaskError('the input has no rider_id', { type: 'BadInput', retryable: false })
    }
    return { rider_id: input.rider_id, delivered: true, notification: idempotencyKey }
  },
  // answers with its input: a smoke test of the round trip
  echo: async (input) => input,
  // takes `seconds` seconds: a long task (the worker stays in its group meanwhile)
  sleep: async ({ seconds }) => {
    await sleep(seconds * 1000)
    return { slept: seconds }
  },
  // always fails, retryably: the engine's retry policy decides what happens next
  unavailable: async () => {
    throw new Error('the service is unavailable')
  }
}

const { values } = parseArgs({
  options: {
    brokers: { type: 'string', default: process.env.OVERTURE_KAFKA_BROKERS ?? '127.0.0.1:9092' },
    namespace: { type: 'string', default: 'overture' },
    queue: { type: 'string', default: 'default' },
    concurrency: { type: 'string', default: '1' },
    'session-timeout': { type: 'string', default: '10000' } // ms
  }
})

const log = (line) => process.stdout.write(JSON.stringify(line) + '\n')
const worker = await runKafkaWorker({
  brokers: values.brokers.split(','),
  namespace: values.namespace,
  queue: values.queue,
  concurrency: Number(values.concurrency),
  sessionTimeout: Number(values['session-timeout']),
  handlers,
  onEvent: log
})
log({ event: 'running', queue: values.queue })
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, async () => {
    await worker.stop()
    process.exit(0)
  })
}
