#!/usr/bin/env python3
"""The official OpenAI Python client against `fathom serve-model`, unchanged.

Usage: openai_client_check.py BASE_URL MODEL
"""

import sys

from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused")
ids = [m.id for m in client.models.list().data]
assert model in ids, f"/v1/models lists {ids}, not {model}"
ask = dict(model=model, messages=[{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": "Who founded the museum?"}],
           max_tokens=6, temperature=0.9, top_p=0.95, seed=11, logprobs=True)
a = client.chat.completions.create(**ask)
b = client.chat.completions.create(**ask)
choice = a.choices[0]
assert choice.message.role == "assistant"
assert a.usage.completion_tokens == len(choice.logprobs.content) <= 6, a.usage
assert all(t.logprob <= 0 for t in choice.logprobs.content)
assert choice.message.content == b.choices[0].message.content, "same seed, same text"
c = client.chat.completions.create(**{**ask, "seed": 12, "max_tokens": 20})
assert c.choices[0].message.content != choice.message.content or c.usage.completion_tokens != a.usage.completion_tokens
stop = client.chat.completions.create(**{**ask, "stop": ["e"], "max_tokens": 40})
assert stop.choices[0].finish_reason in ("stop", "length")
print(f"openai client: /v1/models and /v1/chat/completions work unchanged ({a.usage.completion_tokens} tokens, "
      f"finish {choice.finish_reason})")
