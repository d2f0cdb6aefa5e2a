-- Performance gap recovered (Burns et al. 2023) of each weak-to-strong run:
-- (acc(run) - acc(weak ceiling)) / (acc(strong ceiling) - acc(weak ceiling)); NULL when the
-- two ceilings are equally accurate. Accuracies are shares of test pairs with confidence >= 0.5.
-- Parameters: none.
-- Run: w2s sql sql/pgr.sql --artifacts <root>
with acc as (
    select
        run_id, objective, alpha, seed, weak_model, strong_model,
        count(*) as pairs,
        avg(case when run_conf >= 0.5 then 1.0 else 0.0 end) as run_accuracy,
        avg(case when weak_conf >= 0.5 then 1.0 else 0.0 end) as weak_accuracy,
        avg(case when strong_conf >= 0.5 then 1.0 else 0.0 end) as strong_accuracy
    from experiment_pairs
    group by run_id, objective, alpha, seed, weak_model, strong_model
)
select
    *,
    (run_accuracy - weak_accuracy) / nullif(strong_accuracy - weak_accuracy, 0) as pgr
from acc
order by weak_model, strong_model, objective, alpha, seed
