//! The typed client (Nova's `rpcapi.py`): one method per RPC method, which
//! serialises its arguments by name, straight from its parameters, and
//! calls or casts.

use proc_macro2::TokenStream as Tokens;
use quote::quote;

use crate::parse::Method;

/// What the client is written for.
pub(crate) struct ClientSpec<'a> {
    pub(crate) ident: &'a syn::Ident,
    /// The API it calls (a type or trait), for its doc.
    pub(crate) api: &'a syn::Ident,
    pub(crate) version: &'a str,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) methods: &'a [Method],
    /// Release names and the API version of each.
    pub(crate) releases: &'a [(String, String)],
}

/// The client struct and its methods.
pub(crate) fn client(spec: &ClientSpec<'_>) -> Tokens {
    let p = crate::private();
    let (ident, version) = (spec.ident, spec.version);
    let with_namespace = spec.namespace.map(|n| quote!(.with_namespace(#n)));
    let doc = format!("Typed RPC client for [`{}`], pinned to API version {version}.", spec.api);
    let methods = spec.methods.iter().map(|m| method(m, spec.version));
    let setup = setup(version, with_namespace);
    let release_names = spec.releases.iter().map(|(n, _)| n);
    let release_versions = spec.releases.iter().map(|(_, v)| v);
    quote! {
        #[doc = #doc]
        #[derive(Debug, Clone)]
        pub struct #ident {
            client: #p::RpcClient,
        }

        impl #ident {
            /// Release names an operator may pin this API to
            /// (`[upgrade_levels]`), with the API version of each.
            pub const RELEASES: &'static [(&'static str, &'static str)] = &[#((#release_names, #release_versions)),*];

            #setup

            #(#methods)*
        }
    }
}

/// The client's constructors and settings, the same for every API.
fn setup(version: &str, with_namespace: Option<Tokens>) -> Tokens {
    let p = crate::private();
    quote! {
        /// The API version this client sends.
        pub const VERSION: &'static str = #version;

        /// Connect to the broker at `url` (`rabbit://user:pass@host:5672/`,
        /// `memory://name`) and aim at `topic`, where the API is served.
        ///
        /// # Errors
        ///
        /// A URL that cannot be read, or a broker that cannot be reached.
        pub async fn connect(url: &str, topic: &str) -> ::core::result::Result<Self, #p::RpcError> {
            ::core::result::Result::Ok(Self::new(#p::RpcClient::connect(url, #p::Target::new(topic)).await?))
        }

        /// Wrap an [`RpcClient`](nova_rpc::RpcClient) aimed at the API's topic.
        pub fn new(client: #p::RpcClient) -> Self {
            Self { client: client.with_version(#version) #with_namespace }
        }

        /// The same client, aimed at one server (`topic.host`).
        pub fn with_server(&self, host: impl ::core::convert::Into<::std::string::String>) -> Self {
            Self { client: self.client.with_server(host) }
        }

        /// The same client, to every server of the topic (casts only).
        pub fn with_fanout(&self) -> Self {
            Self { client: self.client.with_fanout(true) }
        }

        /// The same client, capped at `cap` (Nova's `version_cap`).
        pub fn with_version_cap(&self, cap: #p::Version) -> Self {
            Self { client: self.client.with_version_cap(cap) }
        }

        /// Whether `version` may be sent under the cap.
        pub fn can_send_version(&self, version: &str) -> bool {
            self.client.can_send_version(version)
        }

        /// The underlying client.
        pub fn rpc_client(&self) -> &#p::RpcClient {
            &self.client
        }
    }
}

fn method(m: &Method, api_version: &str) -> Tokens {
    let p = crate::private();
    let name = &m.name;
    let name_str = name.to_string();
    let params = m.args.iter().map(|(n, t)| quote!(#n: #t));
    // The arguments are written by name, in order, straight from the
    // parameters: a struct of references, serialised once (no map of
    // JSON values built in between). An argument newer than its method is
    // left out when the pin cannot carry it and it holds its default.
    let newer = |n: &syn::Ident| m.args_since.iter().find(|(a, _)| a == n).map(|(_, v)| v);
    let fields = m.args.iter().map(|(n, t)| match newer(n) {
        Some(_) => quote!(#[serde(skip_serializing_if = "Option::is_none")] #n: ::core::option::Option<&'__a #t>),
        None => quote!(#n: &'__a #t),
    });
    let inits = m.args.iter().map(|(n, _)| match newer(n) {
        Some(_) => {
            let key = n.to_string();
            quote!(#n: (!__dropped.contains(&#key)).then_some(&#n))
        }
        None => quote!(#n: &#n),
    });
    let newer_args = m.args_since.iter().map(|(n, since)| {
        let key = n.to_string();
        let ty = m.args.iter().find(|(a, _)| a == n).map(|(_, t)| t);
        let is_default = match ty {
            Some(t) if crate::parse::is_option(t) => quote!(#n.is_none()),
            _ => quote!(#n == &::core::default::Default::default()),
        };
        quote!((#key, #since, { let #n = &#n; #is_default }))
    });
    let since = m
        .since
        .as_ref()
        .map_or_else(|| format!("{}.0", api_version.split('.').next().unwrap_or("1")), syn::LitStr::value);
    let (ok, err) = (&m.ok, &m.err);
    let doc = &m.doc;
    let doc_attr = (!doc.is_empty()).then(|| quote!(#[doc = #doc]));
    let (body, ret) = if m.cast {
        (quote!(__client.cast(ctx, #name_str, __args).await), quote!(()))
    } else {
        (quote!(__client.call_as::<#ok>(ctx, #name_str, __args).await), quote!(#ok))
    };
    quote! {
        #doc_attr
        pub async fn #name(&self, ctx: &#p::RequestContext, #(#params),*) -> ::core::result::Result<#ret, #err> {
            #[derive(#p::serde::Serialize)]
            #[serde(crate = "::nova_core::__private::serde")]
            struct __Args<'__a> {
                #(#fields,)*
                #[serde(skip)]
                __lifetime: ::core::marker::PhantomData<&'__a ()>,
            }
            // Sent at the oldest version that carries it as called.
            let (__version, __dropped) = self
                .client
                .version_for(#name_str, #since, &[#(#newer_args),*])
                .map_err(<#err as ::nova_core::RemoteError>::from_rpc)?;
            let __client = self.client.with_version(__version);
            let __args = __Args { #(#inits,)* __lifetime: ::core::marker::PhantomData };
            #body.map_err(<#err as ::nova_core::RemoteError>::from_rpc)
        }
    }
}
