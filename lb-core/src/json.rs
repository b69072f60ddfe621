//! What every JSON config of this crate shares: durations written as text.
//!
//! gRPC's JSON writes a duration as seconds with a fraction and an `s` (`"0.030s"`);
//! people write `"30ms"`. Both are read, and both are bounded, so that a typo cannot
//! make a timer that never fires or a deadline that overflows the clock.
//!
//! May import: nothing of this crate.

/// Durations in JSON as text: `"10s"`, `"30ms"`, `"1.5s"`; for settings fields,
/// `#[serde(with = "lb_core::json::duration_text")]`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    /// The longest duration a config may hold: 365 days. Longer ones are refused, as a
    /// deadline or a timer that far away (`now + 1e19s`) cannot be made at all.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// Reads `"0.030s"` (gRPC's JSON form) or `"30ms"` (humantime's), at most [`MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        // gRPC's JSON durations are seconds with a fraction ("0.030s"); humantime
        // reads those only without the fraction, so handle that form first.
        let duration = match text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()) {
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map_err(|e| D::Error::custom(format!("`{text}` is not a duration: {e}")))?,
            None => humantime::parse_duration(&text)
                .map_err(|e| D::Error::custom(format!("`{text}` is not a duration: {e}")))?,
        };
        if duration > MAX {
            return Err(D::Error::custom(format!(
                "`{text}` is too long a duration: at most 365 days"
            )));
        }
        Ok(duration)
    }
}
