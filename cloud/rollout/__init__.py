"""Rollouts in waves: which agents may run a bundle (:mod:`.compat`), which wave an agent is in
(:mod:`.waves`), the rollout state in the store (:mod:`.state`), announcing a wave (:mod:`.publish`),
and the processor's thread that compares cohorts and advances or pauses a rollout (:mod:`.monitor`).
See docs/rollouts.md, "Waves and cohorts"."""
