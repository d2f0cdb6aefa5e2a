-- The report's table of every run: its settings and timings from `runs`, with its test
-- accuracy from analysis_accuracy.
-- Run: w2s sql sql/report/runs.sql --artifacts <root>
select
    r.run_id, r.stage, r.scenario, r.objective, r.base_model, r.teacher, r.alpha, r.seed,
    a.accuracy as test_accuracy, r.steps, r.pairs, r.tokens, r.final_loss, r.resumed_at_step,
    r.wall_seconds, r.tokens_per_second, r.settings
from runs r
left join analysis_accuracy a on a.run_id = r.run_id
order by r.stage, r.base_model, r.objective, r.alpha, r.seed, r.run_id
