"""The micro-world wing: the generated world (its facts, text and tokenizer), the data preparation
of the built-in worlds (the micro world and the wiki rehearsal) into an answer list plus an index,
their warm start (`worlds.warmstart`: demonstrations and SFT, the instruct-model analogue), and the
oracle and fixed-set controls. Only the entry points import it; a run on real data
(`data.source="files"`) never touches it."""
