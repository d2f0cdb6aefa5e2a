-- The case study of the paper's App. Q: for every conflict run, the deceptive flips (pairs the
-- no-conflict student gets right and the conflict student gets wrong, in the Strong-Known &
-- Weak-Unknown area) the two ceilings disagree on most (M_s - M_w, then test position), up to
-- $examples per run, with the pair's text. Runs on roots with the `pairs` table (w2s split).
-- Parameters: $threshold (paper: 0.75), $examples (the report: 3).
-- Run: w2s sql sql/case_study.sql --artifacts <root> --param threshold=0.75 --param examples=3
with deceptive as (
    select
        p.*,
        row_number() over (
            partition by p.run_id
            order by p.strong_conf - p.weak_conf desc, p.split_index
        ) as example
    from experiment_pairs p
    where p.objective <> 'none' and p.reference_conf >= 0.5 and p.run_conf < 0.5
      and p.strong_conf >= $threshold and p.weak_conf < $threshold
)
select
    d.weak_model,
    d.strong_model,
    d.objective,
    d.alpha,
    d.seed,
    d.run_id,
    d.example,
    d.split_index,
    d.weak_conf,
    d.strong_conf,
    d.reference_conf,
    d.run_conf,
    t.prompt,
    t.chosen,
    t.rejected
from deceptive d
join labelled_runs r on r.run_id = d.run_id
join pairs t
    on t.split = case when r.dimension = 'harmless' then 'test' else r.dimension || '-test' end
    and t.split_index = d.split_index
where d.example <= cast($examples as bigint)
order by d.weak_model, d.strong_model, d.objective, d.alpha, d.seed, d.example
