//! Whose session each client id is, and how many sessions each login holds.
//! Pure: the broker's hooks ask and report, this decides.
//!
//! A session belongs to the login that created it: another user (or an
//! anonymous client) reusing its client id would inherit its subscriptions
//! and queued messages, so that is refused. Quotas keep configured users
//! reachable: anonymous clients share `max_clients` sessions, and each user
//! has `max_sessions_per_user` of its own that nobody else can take.

use std::collections::HashMap;

/// Who logged in: a user name, or `None` for an anonymous client.
pub type Login = Option<String>;

/// The session quotas of `[broker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Sessions all anonymous clients together may hold.
    pub anonymous: usize,
    /// Sessions one user may hold, live or persisted.
    pub per_user: usize,
}

/// Why a client id was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The session under this client id belongs to another login.
    Taken,
    /// The login already holds as many sessions as it may.
    OverQuota,
}

#[derive(Debug)]
struct Owned<T> {
    login: Login,
    session: T,
}

/// The owner of every session the broker holds, keyed by client id; `T`
/// tells one session under a client id from the next.
#[derive(Debug)]
pub struct SessionOwners<T> {
    quotas: Quotas,
    by_client: HashMap<String, Owned<T>>,
}

impl<T: PartialEq> SessionOwners<T> {
    /// No sessions yet.
    pub fn new(quotas: Quotas) -> SessionOwners<T> {
        SessionOwners {
            quotas,
            by_client: HashMap::new(),
        }
    }

    /// Lets `login` open `session` under `client`, taking over its own
    /// earlier session there, or says why not.
    pub fn claim(&mut self, client: &str, login: &Login, session: T) -> Result<(), Refusal> {
        if let Some(owned) = self.by_client.get_mut(client) {
            if owned.login != *login {
                return Err(Refusal::Taken);
            }
            owned.session = session;
            return Ok(());
        }
        let limit = match login {
            None => self.quotas.anonymous,
            Some(_) => self.quotas.per_user,
        };
        if self.held_by(login) >= limit {
            return Err(Refusal::OverQuota);
        }
        self.by_client.insert(
            client.to_owned(),
            Owned {
                login: login.clone(),
                session,
            },
        );
        Ok(())
    }

    /// `session` under `client` has ended; a later session there is kept.
    pub fn release(&mut self, client: &str, session: &T) {
        if self
            .by_client
            .get(client)
            .is_some_and(|owned| owned.session == *session)
        {
            self.by_client.remove(client);
        }
    }

    /// Forgets `client` whatever its session (it turned out not to exist).
    pub fn forget(&mut self, client: &str) {
        self.by_client.remove(client);
    }

    /// Sessions `login` holds.
    pub fn held_by(&self, login: &Login) -> usize {
        self.by_client
            .values()
            .filter(|owned| owned.login == *login)
            .count()
    }

    /// The client ids whose sessions `login` holds.
    pub fn clients_of<'a>(&'a self, login: &'a Login) -> impl Iterator<Item = &'a str> + 'a {
        self.by_client
            .iter()
            .filter(move |(_, owned)| owned.login == *login)
            .map(|(client, _)| client.as_str())
    }

    /// Every client id with its login.
    pub fn all(&self) -> impl Iterator<Item = (&str, &Login)> {
        self.by_client
            .iter()
            .map(|(client, owned)| (client.as_str(), &owned.login))
    }

    /// The largest number of sessions these quotas allow for `users` users.
    pub fn capacity(quotas: Quotas, users: usize) -> usize {
        quotas
            .anonymous
            .saturating_add(users.saturating_mul(quotas.per_user))
    }
}

/// The connections open now, and who logged in on each; `T` tells one
/// connection under a client id from the next.
#[derive(Debug)]
pub struct Connections<T> {
    by_client: HashMap<String, (T, Login)>,
}

impl<T> Default for Connections<T> {
    fn default() -> Connections<T> {
        Connections {
            by_client: HashMap::new(),
        }
    }
}

impl<T: PartialEq> Connections<T> {
    /// `connection` opened under `client`, taking over an earlier one there.
    pub fn opened(&mut self, client: &str, connection: T, login: Login) {
        self.by_client
            .insert(client.to_owned(), (connection, login));
    }

    /// `connection` under `client` closed; a later one there stays (a
    /// takeover closes the old connection after the new one opened).
    pub fn closed(&mut self, client: &str, connection: &T) {
        if self
            .by_client
            .get(client)
            .is_some_and(|(open, _)| open == connection)
        {
            self.by_client.remove(client);
        }
    }

    /// Connected clients per login: anonymous first, then users by name.
    pub fn per_login(&self) -> Vec<(Login, usize)> {
        let mut counts = std::collections::BTreeMap::<&Login, usize>::new();
        for (_, login) in self.by_client.values() {
            *counts.entry(login).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(login, n)| (login.clone(), n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Login {
        Some(name.to_owned())
    }

    fn owners() -> SessionOwners<u32> {
        SessionOwners::new(Quotas {
            anonymous: 2,
            per_user: 1,
        })
    }

    #[test]
    fn a_client_id_belongs_to_the_login_that_made_it() {
        let mut o = owners();
        assert_eq!(o.claim("historian", &user("historian"), 1), Ok(()));
        assert_eq!(
            o.claim("historian", &user("viewer"), 2),
            Err(Refusal::Taken)
        );
        assert_eq!(o.claim("historian", &None, 3), Err(Refusal::Taken));
        assert_eq!(
            o.claim("historian", &user("historian"), 4),
            Ok(()),
            "the owner takes its own session over"
        );
    }

    #[test]
    fn anonymous_clients_cannot_use_up_a_users_sessions() {
        let mut o = owners();
        assert_eq!(o.claim("a", &None, 1), Ok(()));
        assert_eq!(o.claim("b", &None, 2), Ok(()));
        assert_eq!(o.claim("c", &None, 3), Err(Refusal::OverQuota));
        assert_eq!(o.claim("hist", &user("historian"), 4), Ok(()));
        assert_eq!(
            o.claim("hist2", &user("historian"), 5),
            Err(Refusal::OverQuota)
        );
        assert_eq!(o.claim("view", &user("viewer"), 6), Ok(()));
        assert_eq!(o.held_by(&None), 2);
        assert_eq!(SessionOwners::<u32>::capacity(o.quotas, 2), 4);
    }

    #[test]
    fn only_the_session_that_ended_is_released() {
        let mut o = owners();
        assert_eq!(o.claim("x", &None, 1), Ok(()));
        assert_eq!(o.claim("x", &None, 2), Ok(()));
        o.release("x", &1);
        assert_eq!(o.held_by(&None), 1, "the newer session stays");
        o.release("x", &2);
        assert_eq!(o.held_by(&None), 0);
        assert_eq!(o.claim("x", &user("u"), 3), Ok(()), "a free id is anyone's");
        assert_eq!(o.clients_of(&user("u")).collect::<Vec<_>>(), ["x"]);
        o.forget("x");
        assert_eq!(o.all().count(), 0);
    }

    #[test]
    fn a_takeover_keeps_the_new_connection_counted() {
        let mut c = Connections::default();
        c.opened("panel", 1, user("hmi"));
        c.opened("viewer", 2, None);
        c.opened("panel", 3, user("hmi"));
        c.closed("panel", &1);
        assert_eq!(c.per_login(), [(None, 1), (user("hmi"), 1)]);
        c.closed("panel", &3);
        c.closed("viewer", &2);
        assert!(c.per_login().is_empty());
    }
}
