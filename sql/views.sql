-- Views every analysis builds on. `w2s sql` and `w2s analyze` create them whenever the `runs`
-- and `scores` tables exist (this file is compiled into `w2s`; comments are dropped and the
-- statements split at semicolons, so keep semicolons out of the SQL text itself).
--
-- Roles (paper §3, docs/reference.md §4):
--   ceiling     a model trained on ground truth (stage gt-train), one per base model, seed and
--               scenario
--   experiment  a weak-to-strong run (stage w2s-train) with
--                 weak_run       its teacher (the weak ceiling),
--                 strong_run     the ceiling of its own base model and seed,
--                 reference_run  the no-conflict run (objective none) of the same teacher,
--                                base model, seed and label threshold (itself, for a
--                                no-conflict run).
-- A grid must have at most one ceiling per (base model, seed) and one no-conflict run per
-- (teacher, base model, seed, label threshold)  `w2s analyze` checks this and names the
-- offending runs.

-- Confidence toward the ground-truth chosen answer of every scored run on the test split of
-- its dimension (`test` for harmlessness, `honesty-test` for honesty, paper App. O).
create view confidences as
select run_id, pair_id, split_index, confidence
from scores
where split in ('test', 'honesty-test');

-- Runs with how a student used its teacher's labels, read from its recorded settings:
-- label_filter, the confidence threshold of a high-confidence student (paper §6.1: trained only
-- on the teacher's labels at least this confident) as text, NULL for all labels, and adaptive,
-- whether its label losses were weighted by the teacher's certainty (App. P), and dimension,
-- the alignment dimension whose splits it trained on (`harmless` unless recorded).
create view labelled_runs as
select
    *,
    regexp_match(settings, '"high_confidence":([-0-9.eE+]+)')[1] as label_filter,
    strpos(settings, '"adaptive":true') > 0 as adaptive,
    coalesce(regexp_match(settings, '"dimension":"([a-z]+)"')[1], 'harmless') as dimension
from runs;

-- Several scenarios and dimensions can share a root: ceilings and references are matched
-- within a scenario and dimension, and a model of another scenario than reward modeling is
-- named `<model> · <scenario>` (of another dimension than harmlessness `<model> · <dimension>
-- <scenario>`, e.g. `run:tiny-1 · honesty simpo`), so every measure keeps them apart. A bootstrapped student (its teacher is itself a student,
-- docs/reference.md §3.9) is measured against the original weak ceiling, and its weak model is
-- named `<weak> via <intermediate>`. A high-confidence student's weak model is named
-- `<weak> (confident ≥ T)`, an adaptive one's `<weak> (adaptive)` (both: `(confident ≥ T,
-- adaptive)`), and its reference is the no-conflict student of the same threshold and
-- weighting, so its cells sit beside the plain cells of the same models.
create view experiments as
select
    w.run_id,
    w.objective,
    w.alpha,
    w.seed,
    case when t.stage = 'w2s-train' then t.teacher else w.teacher end as weak_run,
    case when t.stage = 'w2s-train' then tt.base_model || ' via ' || t.base_model
         else t.base_model end
      || case when w.label_filter is null and not w.adaptive then ''
              else ' (' || concat_ws(', ',
                  case when w.label_filter is not null then 'confident ≥ ' || w.label_filter end,
                  case when w.adaptive then 'adaptive' end) || ')' end
      || case when w.dimension = 'harmless' and w.scenario = 'rm' then ''
              when w.dimension = 'harmless' then ' · ' || w.scenario
              else ' · ' || w.dimension || ' ' || w.scenario end as weak_model,
    w.base_model
      || case when w.dimension = 'harmless' and w.scenario = 'rm' then ''
              when w.dimension = 'harmless' then ' · ' || w.scenario
              else ' · ' || w.dimension || ' ' || w.scenario end as strong_model,
    sc.run_id as strong_run,
    nc.run_id as reference_run
from labelled_runs w
join runs t on t.run_id = w.teacher
left join runs tt on tt.run_id = t.teacher
left join labelled_runs sc
    on sc.stage = 'gt-train' and sc.base_model = w.base_model and sc.seed = w.seed
    and sc.scenario = w.scenario and sc.dimension = w.dimension
left join labelled_runs nc
    on nc.stage = 'w2s-train' and nc.objective = 'none' and nc.scenario = w.scenario
    and nc.teacher = w.teacher and nc.base_model = w.base_model and nc.seed = w.seed
    and coalesce(nc.label_filter, '') = coalesce(w.label_filter, '') and nc.adaptive = w.adaptive
where w.stage = 'w2s-train';

-- One row per (experiment, test pair) with the four confidences the measures need:
-- the run's own, its no-conflict reference's, and the two ceilings'. Pairs some model has not
-- scored are left out (inner joins), so every measure counts the same pairs. Pairs are
-- matched by their position in the test split (an integer join; the same pair in every run).
create view experiment_pairs as
select
    e.run_id,
    e.objective,
    e.alpha,
    e.seed,
    e.weak_run,
    e.weak_model,
    e.strong_run,
    e.strong_model,
    e.reference_run,
    n.pair_id,
    n.split_index,
    n.confidence as run_conf,
    r.confidence as reference_conf,
    s.confidence as strong_conf,
    w.confidence as weak_conf
from experiments e
join confidences n on n.run_id = e.run_id
join confidences r on r.run_id = e.reference_run and r.split_index = n.split_index
join confidences s on s.run_id = e.strong_run and s.split_index = n.split_index
join confidences w on w.run_id = e.weak_run and w.split_index = n.split_index;
