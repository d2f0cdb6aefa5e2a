-- The report's training curves: per step of every ceiling and student, its loss, training
-- accuracy and learning rate, from train_log.
-- Run: w2s sql sql/report/curves.sql --artifacts <root>
select l.run_id, r.stage, l.step, l.loss, l.accuracy, l.lr
from train_log l
join runs r on r.run_id = l.run_id
where r.stage in ('gt-train', 'w2s-train')
order by r.stage, l.run_id, l.step
