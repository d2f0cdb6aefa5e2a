-- Test accuracy of every scored run (paper Fig. 4; docs/reference.md §4): the share of test pairs
-- whose confidence toward the ground-truth chosen answer is >= 0.5, with the counts.
-- Parameters: none.
-- Run: w2s sql sql/accuracy.sql --artifacts <root>
select
    c.run_id,
    coalesce(r.stage, 'external') as stage,
    r.objective,
    r.base_model,
    r.teacher,
    r.alpha,
    r.seed,
    count(*) as pairs,
    sum(case when c.confidence >= 0.5 then 1 else 0 end) as correct,
    avg(case when c.confidence >= 0.5 then 1.0 else 0.0 end) as accuracy
from confidences c
left join runs r on r.run_id = c.run_id
group by c.run_id, r.stage, r.objective, r.base_model, r.teacher, r.alpha, r.seed
order by c.run_id
