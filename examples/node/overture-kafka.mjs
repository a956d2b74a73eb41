// An Overture task worker for Node.js over Kafka, with the kafkajs client.
//
// It speaks the task protocol (docs/protocol.md; the Python source of truth is
// overture/protocol.py and overture/tasks.py) and nothing else of Overture:
//
// - the engine publishes one `overture.task.requested` CloudEvent per task attempt to the
//   queue's topic `<namespace>.tasks.<queue>`, in structured mode (the record value is the
//   event's JSON, header `content-type: application/cloudevents+json`, key = attempt id);
// - the workers of a queue form the consumer group `<namespace>.workers.<queue>`;
// - a worker answers an attempt by producing an `overture.task.completed` (or `.failed`)
//   CloudEvent to `<namespace>.events`, with id `<request id>:result`, the record key and
//   `partitionkey` attribute = the request's `reply.partitionkey`, on partition
//   `reply.partition`, and only then commits the request's offset (at least once: a
//   worker that dies before committing leaves the attempt to the next group member; the
//   engine keeps the first result of an attempt and drops the others).

import { setTimeout as sleep } from 'node:timers/promises'
import { Kafka, PartitionAssigners, Partitioners, logLevel } from 'kafkajs'

export const TASK_REQUESTED = 'overture.task.requested'
export const TASK_COMPLETED = 'overture.task.completed'
export const TASK_FAILED = 'overture.task.failed'
const STRUCTURED = 'application/cloudevents+json'

export const tasksTopic = (namespace, queue) => `${namespace}.tasks.${queue}`
export const workerGroup = (namespace, queue) => `${namespace}.workers.${queue}`
export const eventsTopic = (namespace) => `${namespace}.events`
export const resultId = (attemptId) => `${attemptId}:result`

/** Throw it from a task to fail the attempt; `retryable: false` ends the task at once. */
export class TaskError extends Error {
  constructor (message, { type = 'TaskError', retryable = true } = {}) {
    super(message)
    this.name = type
    this.retryable = retryable
  }
}

// kafkajs calls its round-robin assigner "RoundRobinAssigner"; librdkafka (the Python
// workers) calls the same protocol "roundrobin". Under librdkafka's name a group can mix
// Python and Node.js members: they agree on the protocol, whichever member leads.
const roundRobin = ({ cluster }) => ({ ...PartitionAssigners.roundRobin({ cluster }), name: 'roundrobin' })

/** The result CloudEvent answering `request` (its structured JSON form, as parsed). */
export function resultEvent (request, type, data) {
  const reply = request.data.reply
  const event = {
    specversion: '1.0',
    id: resultId(request.id),
    source: request.source,
    type,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    subject: request.data.task
  }
  if (reply.partitionkey !== null && reply.partitionkey !== undefined) event.partitionkey = reply.partitionkey
  for (const name of ['traceparent', 'tenant']) {
    if (typeof request[name] === 'string') event[name] = request[name]
  }
  event.data = data
  return event
}

/** The request of a record, or a reason it is none we can answer. */
export function parseRequest (message) {
  if (message.value === null) return { problem: 'a record without a value' }
  let event
  try {
    event = JSON.parse(message.value.toString('utf8'))
  } catch (error) {
    return { problem: `not JSON: ${error.message}` }
  }
  if (event === null || typeof event !== 'object' || event.type !== TASK_REQUESTED) {
    return { problem: `not an ${TASK_REQUESTED} event` }
  }
  const data = event.data
  const reply = data?.reply
  if (typeof event.id !== 'string' || typeof data?.task !== 'string' ||
      typeof reply?.partition !== 'number' || typeof data.attempt !== 'number') {
    return { problem: `event ${event.id} lacks id, task, attempt or reply` }
  }
  return { event }
}

/** Run one attempt: the completed or failed result's data. */
async function runAttempt (handlers, request, heartbeat) {
  const data = request.data
  const head = { instance_id: data.instance_id, seq: data.seq, attempt: data.attempt }
  const handler = handlers[data.task]
  if (handler === undefined) {
    const message = `this worker has no handler for task ${JSON.stringify(data.task)}`
    return [TASK_FAILED, { ...head, error: { type: 'UnknownTask', message }, retryable: false }]
  }
  try {
    const output = await handler(data.input ?? null, {
      task: data.task,
      attempt: data.attempt,
      idempotencyKey: data.idempotency_key,
      deadline: data.deadline ?? null,
      instanceId: data.instance_id,
      heartbeat
    })
    JSON.stringify(output ?? null) // a result that is no JSON fails here, as a failure
    return [TASK_COMPLETED, { ...head, output: output ?? null }]
  } catch (error) {
    const type = (error && typeof error.name === 'string' && error.name) || 'Error'
    const message = error instanceof Error ? error.message : String(error)
    return [TASK_FAILED, { ...head, error: { type, message }, retryable: error?.retryable !== false }]
  }
}

/**
 * Make sure the queue's topic exists before subscribing to it, as Overture's own workers
 * do (a topic is created on first use by whichever comes first, an engine publishing or a
 * worker claiming; brokers should not auto-create topics): with the events topic's
 * partition count, once the events topic exists (the app's first client or engine makes
 * it). Losing the race to an engine creating it at the same moment is fine.
 */
async function ensureTopic (kafka, namespace, topic, onEvent) {
  const admin = kafka.admin()
  await admin.connect()
  try {
    for (let told = false; ; told = true) {
      const topics = await admin.listTopics()
      if (topics.includes(topic)) return
      if (topics.includes(eventsTopic(namespace))) {
        const { topics: [events] } = await admin.fetchTopicMetadata({
          topics: [eventsTopic(namespace)]
        })
        await admin.createTopics({
          topics: [{ topic, numPartitions: events.partitions.length }],
          waitForLeaders: true
        })
        return
      }
      if (!told) onEvent({ event: 'waiting', topic: eventsTopic(namespace) })
      await sleep(500)
    }
  } finally {
    await admin.disconnect()
  }
}

/**
 * Serve `queue`: run `handlers[task](input, info)` for each attempt and answer it.
 * Returns `{ stop }` once the consumer runs; `onEvent` hears what happens (for logs).
 */
export async function runKafkaWorker ({
  brokers, namespace = 'overture', queue = 'default', handlers, concurrency = 1,
  sessionTimeout = 10000, clientId = 'overture-node-worker', onEvent = () => {}
}) {
  const kafka = new Kafka({ clientId, brokers, logLevel: logLevel.WARN })
  // every result names its partition, so the partitioner never decides anything
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: Partitioners.DefaultPartitioner
  })
  const consumer = kafka.consumer({
    groupId: workerGroup(namespace, queue),
    partitionAssigners: [roundRobin],
    sessionTimeout,
    heartbeatInterval: 1000,
    readUncommitted: false // only attempts of engine transactions that committed
  })
  const topic = tasksTopic(namespace, queue)
  await ensureTopic(kafka, namespace, topic, onEvent)
  await producer.connect()
  await consumer.connect()
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) =>
    onEvent({ event: 'joined', partitions: payload.memberAssignment[topic] ?? [] }))
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    partitionsConsumedConcurrently: concurrency,
    eachMessage: async ({ partition, message, heartbeat }) => {
      const next = (BigInt(message.offset) + 1n).toString()
      const { event, problem } = parseRequest(message)
      if (event === undefined) {
        onEvent({ event: 'skipped', partition, offset: message.offset, reason: problem })
      } else if (event.data.deadline != null && Date.now() / 1000 >= event.data.deadline) {
        // the engine has given this attempt up: its result would be dropped
        onEvent({ event: 'expired', id: event.id })
      } else {
        // kafkajs heartbeats to the group only between messages: without these, a task
        // longer than the session timeout would get this member thrown out of the group
        // and its attempt run again elsewhere
        const beat = setInterval(() => heartbeat().catch(() => {}), 1000)
        let type, data
        try {
          [type, data] = await runAttempt(handlers, event, heartbeat)
        } finally {
          clearInterval(beat)
        }
        const result = resultEvent(event, type, data)
        await producer.send({
          topic: eventsTopic(namespace),
          acks: -1,
          messages: [{
            key: result.partitionkey ?? null,
            partition: event.data.reply.partition,
            headers: { 'content-type': STRUCTURED },
            value: JSON.stringify(result)
          }]
        })
        onEvent({ event: 'answered', id: event.id, type })
      }
      // only once the result is acknowledged: a crash before this re-runs the attempt
      await consumer.commitOffsets([{ topic, partition, offset: next }])
    }
  })
  return {
    async stop () {
      await consumer.disconnect()
      await producer.disconnect()
    }
  }
}
