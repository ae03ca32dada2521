//! Periodic tasks: each `#[periodic_task]` method as a `PeriodicTask`.

use proc_macro2::TokenStream as Tokens;
use quote::quote;

use crate::parse::Periodic;

/// Expressions building one `PeriodicTask` per method, on `self: &Arc<Self>`.
pub(crate) fn tasks(periodics: &[(syn::Ident, Periodic)]) -> Vec<Tokens> {
    let p = crate::private();
    periodics
        .iter()
        .map(|(name, per)| {
            let name_str = name.to_string();
            let (spacing, run_immediately, enabled) = (&per.spacing, &per.run_immediately, &per.enabled);
            quote! {
                {
                    let this = ::std::sync::Arc::clone(self);
                    #p::PeriodicTask::new(#name_str, (#spacing) as f64, move || {
                        let this = this.clone();
                        ::std::boxed::Box::pin(async move {
                            this.#name(#p::RequestContext::new()).await.map_err(|e| e.to_string())
                        }) as #p::BoxFuture<::core::result::Result<(), ::std::string::String>>
                    })
                    .run_immediately(#run_immediately)
                    .enabled(#enabled)
                }
            }
        })
        .collect()
}
