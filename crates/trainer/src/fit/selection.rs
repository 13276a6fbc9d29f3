//! Model selection: which epoch is best by `train.monitor` (Lightning's `ModelCheckpoint`), its
//! model kept in `checkpoints/best/`, and early stopping after `train.early_stopping_patience`
//! epochs without improvement (Lightning's `EarlyStopping`).

use vidtrain_config::Config;

use crate::persist::checkpoint::TrainingState;

/// The monitored metric and how it is judged.
pub(crate) struct ModelSelection {
    pub monitor: String,
    maximise: bool,
    patience: usize,
}

impl ModelSelection {
    pub(crate) fn from_config(config: &Config) -> Self {
        let monitor = config.train.monitor.clone();
        Self {
            maximise: config.train.monitor_mode.maximises(&monitor),
            monitor,
            patience: config.train.early_stopping_patience,
        }
    }

    /// Records epoch `epoch`'s value of the monitored metric; returns whether it is the best so
    /// far (the first epoch always is; a missing or NaN value never is).
    pub(crate) fn consider(
        &self,
        state: &mut TrainingState,
        epoch: usize,
        value: Option<f64>,
    ) -> bool {
        let Some(value) = value.filter(|value| value.is_finite()) else {
            return false;
        };
        let better = state.best.is_none_or(|(_, best)| {
            if self.maximise {
                value > best
            } else {
                value < best
            }
        });
        if better {
            state.best = Some((epoch, value));
        }
        better
    }

    /// Whether to stop after epoch `epoch`: `patience` epochs have passed since the best one.
    pub(crate) fn should_stop(&self, state: &TrainingState, epoch: usize) -> bool {
        self.patience > 0
            && state
                .best
                .is_some_and(|(best_epoch, _)| epoch >= best_epoch + self.patience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::LossScaler;

    fn state() -> TrainingState {
        TrainingState::start(LossScaler::default(), 1)
    }

    fn selection(overrides: &[&str]) -> ModelSelection {
        let config = vidtrain_config::ConfigLoader::with_overrides(overrides).unwrap();
        ModelSelection::from_config(&config)
    }

    #[test]
    fn the_best_epoch_follows_the_monitor_and_its_direction() {
        let f1 = selection(&["train.monitor=val_macro_f1"]);
        let mut state = state();
        let values = [0.3, 0.5, 0.4, 0.5, 0.6];
        let bests: Vec<bool> = values
            .iter()
            .enumerate()
            .map(|(epoch, &value)| f1.consider(&mut state, epoch + 1, Some(value)))
            .collect();
        assert_eq!(bests, [true, true, false, false, true]);
        assert_eq!(state.best, Some((5, 0.6)));

        let loss = selection(&["train.monitor=val_loss"]);
        let mut state = self::state();
        assert!(loss.consider(&mut state, 1, Some(1.0)));
        assert!(!loss.consider(&mut state, 2, Some(1.2)));
        assert!(!loss.consider(&mut state, 3, Some(f64::NAN)));
        assert!(loss.consider(&mut state, 4, Some(0.9)));
        let forced = selection(&["train.monitor=val_loss", "train.monitor_mode=max"]);
        let mut state = self::state();
        forced.consider(&mut state, 1, Some(1.0));
        assert!(forced.consider(&mut state, 2, Some(1.2)));
    }

    #[test]
    fn early_stopping_waits_patience_epochs_after_the_best() {
        let patient = selection(&["train.early_stopping_patience=2"]);
        let mut state = state();
        let values = [0.5, 0.6, 0.55, 0.58, 0.9];
        let mut stopped_after = None;
        for (index, &value) in values.iter().enumerate() {
            let epoch = index + 1;
            patient.consider(&mut state, epoch, Some(value));
            if patient.should_stop(&state, epoch) {
                stopped_after = Some(epoch);
                break;
            }
        }
        assert_eq!(stopped_after, Some(4));
        let never = selection(&[]);
        assert!(!never.should_stop(&state, 100));
    }
}
