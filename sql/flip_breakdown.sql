-- How the flip set of each conflict run (paper Eq. 8: right under no conflict, wrong under
-- conflict) spreads over the four knowledge areas at threshold $threshold (paper App. L).
-- Shares are over the flip set and NULL when it is empty.
-- Parameters: $threshold (paper: 0.75).
-- Run: w2s sql sql/flip_breakdown.sql --artifacts <root> --param threshold=0.75
with flips as (
    select
        run_id, objective, alpha, seed, weak_model, strong_model,
        strong_conf >= $threshold as strong_known,
        weak_conf >= $threshold as weak_known
    from experiment_pairs
    where objective <> 'none' and reference_conf >= 0.5 and run_conf < 0.5
),
runs_ as (
    select distinct run_id, objective, alpha, seed, weak_model, strong_model
    from experiment_pairs
    where objective <> 'none'
)
select
    r.run_id,
    r.objective,
    r.alpha,
    r.seed,
    r.weak_model,
    r.strong_model,
    cast($threshold as double) as threshold,
    count(f.run_id) as flips,
    sum(case when f.strong_known and f.weak_known then 1 else 0 end) as sk_wk,
    sum(case when f.strong_known and not f.weak_known then 1 else 0 end) as sk_wuk,
    sum(case when not f.strong_known and f.weak_known then 1 else 0 end) as suk_wk,
    sum(case when not f.strong_known and not f.weak_known then 1 else 0 end) as suk_wuk,
    cast(sum(case when f.strong_known and f.weak_known then 1 else 0 end) as double)
        / nullif(count(f.run_id), 0) as sk_wk_share,
    cast(sum(case when f.strong_known and not f.weak_known then 1 else 0 end) as double)
        / nullif(count(f.run_id), 0) as sk_wuk_share,
    cast(sum(case when not f.strong_known and f.weak_known then 1 else 0 end) as double)
        / nullif(count(f.run_id), 0) as suk_wk_share,
    cast(sum(case when not f.strong_known and not f.weak_known then 1 else 0 end) as double)
        / nullif(count(f.run_id), 0) as suk_wuk_share
from runs_ r
left join flips f on f.run_id = r.run_id
group by r.run_id, r.objective, r.alpha, r.seed, r.weak_model, r.strong_model
order by r.weak_model, r.strong_model, r.objective, r.alpha, r.seed
