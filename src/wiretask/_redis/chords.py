"""The chord scripts of the Redis result backend: Celery 5.7's chord bookkeeping.

A chord's header tasks report to keys named after the chord's group id, under Celery's
group prefix ``celery-taskset-meta-<group_id>`` (``global_keyprefix`` applied as for
every result key), so that Celery workers and wiretask workers can share one chord:

* ``.s``: the chord's size, set by the client before the last header task is sent;
* ``.j``: the parts, one per header task: the encoded ``[1, task_id, state, result]``,
  in a sorted set scored by the task's ``group_index`` (``result_chord_ordered``, the
  default) or a list in arrival order;
* ``.d``: a set of ``<task_id>:<group_index>``, so a part that arrives twice (a
  redelivered task) is counted once;
* ``.t``: an adjustment to the size (tasks added to a running chord), read only;
* ``.c``: the claim: the token of the one worker allowed to send the body, or ``done``
  once the chord finished (then nothing counts or starts it again);
* the group key itself, when the client kept the header's result tuple there, is given
  the chord's expiry too.

Each script is one atomic step (``spec/PROTOCOL.md`` §19.4 describes them in full). They are
written for wiretask; what they do to the keys is what Celery 5.7's do, so the two mix.
"""

from __future__ import annotations

from wiretask._redis.scripts import Script, ScriptCall

__all__ = ["CHORD_CLAIM", "CHORD_FINISH", "CHORD_PART", "chord_claim", "chord_finish",
           "chord_part"]

#: Count one header task's part and, if that completes the chord, claim it.
#:
#: KEYS: [1] .j, [2] .t, [3] .s, [4] .d, [5] the group key, [6] .c
#: ARGV: [1] task id, [2] the encoded part, [3] "1" for a sorted .j, [4] the score
#:       (group_index, or "+inf"), [5] seconds the chord keys live (0: no change),
#:       [6] seconds the group key lives (0: no change), [7] seconds a claim lasts,
#:       [8] the claim token.
#: Returns {parts recorded, .t, .s, 1 if claimed here}, or {-1, 0, 0, 0} when the
#: chord is finished already.
CHORD_PART = Script("""
local parts, diff, size, seen, group, claim = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, part, sorted, score = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local keep, keep_group = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('GET', claim) == 'done' then
    return {-1, 0, 0, 0}
end
local entry = task_id .. ':' .. score
if redis.call('SADD', seen, entry) == 1 then
    if sorted then
        redis.call('ZADD', parts, score, part)
    else
        redis.call('RPUSH', parts, part)
    end
end
local count
if sorted then
    count = redis.call('ZCARD', parts)
else
    count = redis.call('LLEN', parts)
end
if keep > 0 then
    redis.call('EXPIRE', parts, keep)
    redis.call('EXPIRE', diff, keep)
    redis.call('EXPIRE', size, keep)
    redis.call('EXPIRE', seen, keep)
    if keep_group > 0 then
        redis.call('EXPIRE', group, keep_group)
    end
end
local adjust = redis.call('GET', diff)
local total = redis.call('GET', size)
local claimed = 0
if total and count == tonumber(total) + tonumber(adjust or 0) then
    if redis.call('SET', claim, ARGV[8], 'NX', 'EX', tonumber(ARGV[7])) then
        claimed = 1
    end
end
return {count, adjust, total, claimed}
""")

#: Keep a claim: extend it while the token holds it, or take it again if it lapsed and
#: the chord is not finished (its size is still there).
#:
#: KEYS: [1] .c, [2] .s    ARGV: [1] the token, [2] seconds.    Returns 1 or 0.
CHORD_CLAIM = Script("""
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
    return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
if not current and redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]), 'NX') then
        return 1
    end
end
return 0
""")

#: Finish a chord whose body was sent: if the token holds the claim, delete the chord's
#: keys and mark it done for a while (0: just delete).
#:
#: KEYS: [1] .c, [2] .j, [3] .t, [4] .s, [5] .d    ARGV: [1] the token, [2] seconds.
#: Returns 1, or 0 when the claim was lost (the keys are left to expire).
CHORD_FINISH = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local keep = tonumber(ARGV[2])
if keep > 0 then
    redis.call('SET', KEYS[1], 'done', 'EX', keep)
end
return 1
""")


def _keys(group_key: str, *suffixes: str) -> list[str]:
    return [f"{group_key}{suffix}" for suffix in suffixes]


def chord_part(
    group_key: str, task_id: str, score: str, part: bytes, *, ordered: bool,
    keep: int, keep_group: int, claim_seconds: int, token: str,
) -> ScriptCall:
    """``CHORD_PART`` for the chord whose group key is ``group_key``."""
    return ScriptCall(
        CHORD_PART,
        [*_keys(group_key, ".j", ".t", ".s", ".d"), group_key, f"{group_key}.c"],
        [task_id, part, "1" if ordered else "0", score, keep, keep_group, claim_seconds,
         token],
    )


def chord_claim(group_key: str, token: str, seconds: int) -> ScriptCall:
    """``CHORD_CLAIM`` for the chord whose group key is ``group_key``."""
    return ScriptCall(CHORD_CLAIM, _keys(group_key, ".c", ".s"), [token, seconds])


def chord_finish(group_key: str, token: str, seconds: int) -> ScriptCall:
    """``CHORD_FINISH`` for the chord whose group key is ``group_key``."""
    return ScriptCall(CHORD_FINISH, _keys(group_key, ".c", ".j", ".t", ".s", ".d"),
                      [token, seconds])
