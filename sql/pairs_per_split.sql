-- Pairs per split, with how many keep a separate rejected prompt (docs/reference.md §1.2) and the
-- mean response lengths in characters.
-- Run: w2s sql sql/pairs_per_split.sql --artifacts <root>
select
    split,
    count(*) as pairs,
    count(rejected_prompt) as separate_rejected_prompt,
    round(avg(character_length(chosen)), 1) as mean_chosen_chars,
    round(avg(character_length(rejected)), 1) as mean_rejected_chars
from pairs
group by split
order by case split when 'gt' then 0 when 'w2s' then 1 when 'test' then 2 else 3 end
