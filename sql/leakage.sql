-- Leakage audit (docs/analyses.md "Leakage audit"): for every training split of the root
-- (gt, w2s, helpful, and honesty-* where the root has the honesty dimension), how many test
-- pairs (of every dimension's test split) share their exact prompt with one of its pairs, and
-- how many share the whole pair (prompt and both responses, in either orientation). Every
-- count 0 means no test pair's content was trained on. Exact text; whitespace counts.
-- Run: w2s sql sql/leakage.sql --artifacts <root>
with test as (
    select pair_id, prompt, chosen, rejected from pairs where split in ('test', 'honesty-test')
),
training as (
    select distinct split, prompt, chosen, rejected from pairs
    where split not in ('test', 'honesty-test')
),
same_prompt as (
    select distinct tr.split, te.pair_id
    from test te join training tr on tr.prompt = te.prompt
),
same_pair as (
    select distinct tr.split, te.pair_id
    from test te join training tr
        on tr.prompt = te.prompt
        and ((tr.chosen = te.chosen and tr.rejected = te.rejected)
             or (tr.chosen = te.rejected and tr.rejected = te.chosen))
),
splits as (
    select split, count(*) as training_pairs from training group by split
)
select
    s.split as training_split,
    s.training_pairs,
    (select count(*) from test) as test_pairs,
    count(distinct p.pair_id) as test_pairs_same_prompt,
    count(distinct q.pair_id) as test_pairs_same_pair
from splits s
left join same_prompt p on p.split = s.split
left join same_pair q on q.split = s.split and q.pair_id = p.pair_id
group by s.split, s.training_pairs
order by s.split
