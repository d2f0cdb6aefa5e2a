-- Knowledge areas against the truth (docs/analyses.md "Knowledge areas against the truth";
-- beyond the paper): on the synthetic world, where what each model knows is measured, compare
-- the paper's proxy for the Strong-Known & Weak-Unknown area (strong ceiling's confidence >= T,
-- weak ceiling's < T) with the truth (the strong ceiling's base model knows the pair's entity
-- and the weak one's does not, by `w2s pretrain`'s knowledge probe), per ceiling pair and T.
-- precision: share of the proxy area that is truly known only to the strong model (beside
-- chance_precision, what a proxy that ignored knowledge would score: the true area's share);
-- recall: share of the true area the proxy finds; agreement: share of pairs where they agree.
-- A test pair's entity is the world entity its prompt names (an honesty question about a
-- made-up entity names none, so only its knowable questions are judged). Runs only on roots with the
-- `entities`, `knowledge` and `pairs` tables (the embedded world).
-- Run: w2s sql sql/knowledge_truth.sql --artifacts <root>
with ceilings as (
    select distinct
        e.weak_run, e.weak_model, e.strong_run, e.strong_model, e.seed,
        w.base_model as weak_base, s.base_model as strong_base,
        case when s.dimension = 'harmless' then 'test' else s.dimension || '-test' end
            as test_split
    from experiments e
    join runs w on w.run_id = e.weak_run
    join labelled_runs s on s.run_id = e.strong_run
),
test_entities as (
    select p.split, p.split_index, n.entity
    from pairs p
    join entities n on regexp_like(p.prompt, '\b' || n.entity || '\b')
    where p.split in ('test', 'honesty-test')
),
thresholds as (
    select column1 as t
    from (values (0.5), (0.55), (0.6), (0.65), (0.7), (0.75), (0.8), (0.85), (0.9), (0.95)) v
),
judged as (
    select
        c.weak_model, c.strong_model, c.seed, th.t,
        s.confidence >= th.t and w.confidence < th.t as proxy,
        ks.knows and not kw.knows as truth
    from ceilings c
    cross join thresholds th
    join confidences s on s.run_id = c.strong_run
    join confidences w on w.run_id = c.weak_run and w.split_index = s.split_index
    join test_entities te on te.split = c.test_split and te.split_index = s.split_index
    join knowledge ks on ks.model_id = replace(c.strong_base, 'run:', '') and ks.entity = te.entity
    join knowledge kw on kw.model_id = replace(c.weak_base, 'run:', '') and kw.entity = te.entity
)
select
    weak_model,
    strong_model,
    seed,
    t as threshold,
    count(*) as pairs,
    sum(cast(proxy as int)) as proxy_area,
    sum(cast(truth as int)) as true_area,
    sum(cast(proxy and truth as int)) as both,
    avg(case when proxy = truth then 1.0 else 0.0 end) as agreement,
    cast(sum(cast(proxy and truth as int)) as double) / nullif(sum(cast(proxy as int)), 0)
        as precision,
    cast(sum(cast(proxy and truth as int)) as double) / nullif(sum(cast(truth as int)), 0)
        as recall,
    avg(case when truth then 1.0 else 0.0 end) as chance_precision
from judged
group by weak_model, strong_model, seed, t
order by weak_model, strong_model, seed, t
