//! The one way a vocabulary enum becomes text and back: [`named!`] gives a fieldless enum its
//! stable names (`as_str`, `FromStr`, `Display`, `ALL`), so each name is written once, beside its
//! variant, and an unknown name is an error that lists the known ones.

/// A name that is not in a vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{name}': expected one of {expected}")]
pub struct UnknownName {
    /// What the vocabulary names, e.g. "request state".
    pub what: &'static str,
    /// The name that was given.
    pub name: String,
    /// The known names, comma-separated.
    pub expected: String,
}

/// Gives a fieldless enum its names. Every variant is listed with its name, so the match in
/// `as_str` is exhaustive by construction and `ALL` cannot miss one.
macro_rules! named {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The stable name, as stored in the database and written in output.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::domain::names::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::domain::names::UnknownName {
                        what: $what,
                        name: s.to_owned(),
                        expected: $ty::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

pub(crate) use named;
