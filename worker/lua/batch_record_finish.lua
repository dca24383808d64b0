-- worker.batches.record, a part of the scripts that count a batch's lines (batch_record_save_line,
-- batch_record_end_waiting), after the outbox's part (outbox_queue_delivery, worker.outputs.outbox):
-- `finish_batch(record, outbox, delivery key, delivery, now s, purge_at)` gives the batch its
-- final status once every line is counted (not while its lines are being written): cancelled if it
-- was cancelling, expired if a line expired, else completed; its webhook queued if it has a
-- callback_url.
local function finish_batch(record, outbox, delivery_key, delivery, now, purge)
  local c = redis.call('HMGET', record, 'total', 'completed', 'failed', 'expired', 'status')
  if tonumber(c[2] or 0) + tonumber(c[3] or 0) < tonumber(c[1] or 0) or c[5] == 'validating' then return end
  local final, at = 'completed', 'completed_at'
  if c[5] == 'cancelling' then final, at = 'cancelled', 'cancelled_at'
  elseif tonumber(c[4] or 0) > 0 then final, at = 'expired', 'expired_at' end
  redis.call('HSET', record, 'finalizing_at', now, 'status', final, at, now)
  local url = redis.call('HGET', record, 'callback_url')
  if url then queue_delivery(outbox, delivery_key, delivery, url, now, tonumber(purge) - tonumber(now)) end
end
