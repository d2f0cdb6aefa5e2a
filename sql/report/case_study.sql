-- The report's case-study table (App. Q): the two clearest deceptive flips of each conflict
-- cell at its first seed, models in capability order, texts cut to 240 characters, from
-- analysis_case_study (every run, up to three each, full texts).
-- Run: w2s sql sql/report/case_study.sql --artifacts <root>
with first_seed as (
    select weak_model, strong_model, objective, alpha, min(seed) as seed
    from analysis_case_study
    group by weak_model, strong_model, objective, alpha
)
select
    c.weak_model, c.strong_model, c.objective, c.alpha, c.seed, c.example, c.split_index,
    round(c.weak_conf, 3) as weak_conf, round(c.strong_conf, 3) as strong_conf,
    round(c.reference_conf, 3) as no_conflict_conf, round(c.run_conf, 3) as conflict_conf,
    substr(c.prompt, 1, 240) as prompt, substr(c.chosen, 1, 240) as chosen,
    substr(c.rejected, 1, 240) as rejected
from analysis_case_study c
join first_seed f
    on f.weak_model = c.weak_model and f.strong_model = c.strong_model
    and f.objective = c.objective and f.seed = c.seed
    and coalesce(f.alpha, -1) = coalesce(c.alpha, -1)
left join analysis_model_order w on w.model = c.weak_model
left join analysis_model_order s on s.model = c.strong_model
where c.example <= 2
order by w.rank, s.rank, c.weak_model, c.strong_model, c.objective, c.alpha, c.example
