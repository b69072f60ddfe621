//! Steps several policies share: drawing distinct endpoints, the best of a sample,
//! the key of a hashing policy, and how explanations name an endpoint.

use super::picker::{PickContext, PickError};
use super::slow_start::SlowStart;
use crate::EndpointState;

/// The largest `k` of the power-of-k-choices policies (gRFC A48 clamps larger values
/// to it).
pub const MAX_CHOICES: usize = 10;

/// Up to `k` distinct indices below `n`, drawn uniformly; all of `0..n` when `k >= n`.
///
/// Used by the power-of-k-choices policies. Rejection sampling: with `k` at most 10 and
/// `k < n`, a repeat is rare and cheap to redraw.
pub(crate) fn sample_distinct<'s>(
    n: usize,
    k: usize,
    ctx: &mut PickContext<'_>,
    out: &'s mut [usize; MAX_CHOICES],
) -> &'s [usize] {
    let k = k.min(out.len());
    if k >= n {
        for (i, slot) in out.iter_mut().enumerate().take(n) {
            *slot = i;
        }
        return &out[..n];
    }
    let mut len = 0;
    while len < k {
        let candidate = ctx.index(n);
        if !out[..len].contains(&candidate) {
            out[len] = candidate;
            len += 1;
        }
    }
    &out[..len]
}

/// The power-of-k-choices step shared by `least_request` and `peak_ewma`: draws `k`
/// distinct endpoints, keeps the ready one with the lowest `cost`, and explains the
/// sample with `describe` (`"b: 3 in flight"`). If every sampled endpoint went down
/// since the snapshot, any ready one is taken instead. With slow start, a winner in its
/// window keeps the pick only with the probability its ramp says, and passes it to the
/// runner-up otherwise.
pub(crate) fn best_of_sample(
    name: &str,
    endpoints: &[EndpointState],
    ctx: &mut PickContext<'_>,
    k: usize,
    slow_start: Option<&SlowStart>,
    cost: impl Fn(&EndpointState) -> f64,
    describe: impl Fn(&EndpointState) -> String,
) -> Result<usize, PickError> {
    if endpoints.is_empty() {
        return Err(PickError::NoEndpoints);
    }
    let mut buffer = [0; MAX_CHOICES];
    let sample = sample_distinct(endpoints.len(), k, ctx, &mut buffer);
    let cheapest = |except: Option<usize>| {
        sample
            .iter()
            .copied()
            .filter(|&i| endpoints[i].is_ready() && Some(i) != except)
            .min_by(|&a, &b| cost(&endpoints[a]).total_cmp(&cost(&endpoints[b])))
    };
    let mut best = cheapest(None);
    if let (Some(slow_start), Some(winner)) = (slow_start, best)
        && !slow_start.admits(&endpoints[winner], ctx)
    {
        best = cheapest(Some(winner)).or(best);
    }
    let i = match best {
        Some(i) => i,
        None => random_ready(endpoints, ctx)?,
    };
    if ctx.explaining() {
        let sampled: Vec<String> = sample.iter().map(|&s| describe(&endpoints[s])).collect();
        ctx.explain(|| {
            format!(
                "{name} sampled {{{}}} -> {}",
                sampled.join(", "),
                label(&endpoints[i])
            )
        });
    }
    Ok(i)
}

/// The step shared by the hashing policies: the call's key, or, for a call without
/// one, a random ready endpoint (explained as such).
pub(crate) enum Keyed<'a> {
    /// The value of the key header.
    Key(&'a [u8]),
    /// No key: this endpoint was drawn at random.
    Random(usize),
}

pub(crate) fn key_or_random<'a>(
    name: &str,
    header: &str,
    endpoints: &[EndpointState],
    ctx: &mut PickContext<'a>,
) -> Result<Keyed<'a>, PickError> {
    if let Some(key) = ctx.header(header) {
        return Ok(Keyed::Key(key));
    }
    let i = random_ready(endpoints, ctx)?;
    ctx.explain(|| {
        format!(
            "{name}: no `{header}` header, random -> {}",
            label(&endpoints[i])
        )
    });
    Ok(Keyed::Random(i))
}

/// The first of `candidates` (owners in ring or table order) that is a ready endpoint:
/// while an owner is down, its keys go to the next one along.
pub(crate) fn first_ready(
    candidates: impl Iterator<Item = usize>,
    endpoints: &[EndpointState],
) -> Result<usize, PickError> {
    candidates
        .into_iter()
        .find(|&i| i < endpoints.len() && endpoints[i].is_ready())
        .ok_or_else(|| PickError::none_ready(endpoints))
}

/// A short name for an endpoint in explanations: its address.
pub(crate) fn label(endpoint: &EndpointState) -> String {
    endpoint.endpoint().to_string()
}

/// A uniformly random ready endpoint: also the fallback of the hashing policies for
/// calls without a key.
pub(crate) fn random_ready(
    endpoints: &[EndpointState],
    ctx: &mut PickContext<'_>,
) -> Result<usize, PickError> {
    if endpoints.is_empty() {
        return Err(PickError::NoEndpoints);
    }
    // Fast path: in a healthy fleet every endpoint is ready and one draw suffices.
    let i = ctx.index(endpoints.len());
    if endpoints[i].is_ready() {
        return Ok(i);
    }
    let ready = endpoints.iter().filter(|e| e.is_ready()).count();
    if ready == 0 {
        return Err(PickError::none_ready(endpoints));
    }
    let k = ctx.index(ready);
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_ready())
        .nth(k)
        .map(|(i, _)| i)
        .ok_or_else(|| PickError::none_ready(endpoints))
}
