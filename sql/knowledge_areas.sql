-- Knowledge areas (paper §3.2, Eq. 7; docs/reference.md §4) of each (weak ceiling, strong
-- ceiling) pair at threshold $threshold (paper: 0.75): a pair is Strong-Known when the strong
-- ceiling's confidence is >= T (else Strong-Unknown), Weak-Known when the weak ceiling's is
-- >= T. Counts of the four areas, and the share of Strong-Known & Weak-Unknown pairs (Fig. 8).
-- Parameters: $threshold.
-- Run: w2s sql sql/knowledge_areas.sql --artifacts <root> --param threshold=0.75
with ceilings as (
    select distinct weak_run, weak_model, strong_run, strong_model, seed
    from experiments
    where strong_run is not null
),
areas as (
    select
        c.weak_run, c.weak_model, c.strong_run, c.strong_model, c.seed,
        s.confidence >= $threshold as strong_known,
        w.confidence >= $threshold as weak_known
    from ceilings c
    join confidences s on s.run_id = c.strong_run
    join confidences w on w.run_id = c.weak_run and w.split_index = s.split_index
)
select
    weak_run,
    weak_model,
    strong_run,
    strong_model,
    seed,
    cast($threshold as double) as threshold,
    count(*) as pairs,
    sum(case when strong_known and weak_known then 1 else 0 end) as sk_wk,
    sum(case when strong_known and not weak_known then 1 else 0 end) as sk_wuk,
    sum(case when not strong_known and weak_known then 1 else 0 end) as suk_wk,
    sum(case when not strong_known and not weak_known then 1 else 0 end) as suk_wuk,
    avg(case when strong_known and not weak_known then 1.0 else 0.0 end) as sk_wuk_share
from areas
group by weak_run, weak_model, strong_run, strong_model, seed
order by weak_model, strong_model, seed
