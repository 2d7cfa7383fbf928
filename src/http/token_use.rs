//! A token's last use, for `klaxon token list`: written after the request
//! is authorised, off its path (a lost note costs nothing but the date).

use crate::app::AppState;
use crate::store::tokens;

/// Records in the background that `token` was just used.
pub fn note(state: &AppState, token: String) {
    let (store, now) = (state.store.clone(), state.services.now_ms());
    tokio::spawn(async move {
        if let Err(e) = store.write(move |c| tokens::touch(c, &token, now)).await {
            tracing::debug!(error = %e, "Cannot note a token's last use.");
        }
    });
}
