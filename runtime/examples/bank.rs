//! A bank on event-sourced accounts: deposits, withdrawals (never overdrawn) and transfers,
//! a projection of the balance of each branch, a restart of the node in the middle, and a final
//! check that the projection equals the sum of the accounts.
//!
//! Run it with `cargo run --release -p quark --example bank` (it uses a temporary data
//! directory; pass a directory as the first argument to keep the data).
//!
//! A transfer here is two turns on two actors (withdraw from one, then deposit to the other):
//! a crash between them would lose the money in flight. Making that exactly-once is the job of
//! the transactional outbox and sagas; this example restarts the node between operations.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use quark::journal::{
    EventMeta, EventSourced, JournalEvent, JournalPolicy, LogPosition, Persist, PersistError,
    Projection, ProjectionConfig, Subscriptions,
};
use quark::{block_on, Actor, ActorKey, Context, Handler, Message, Node, NodeConfig};
use serde::{Deserialize, Serialize};

/// An account; its key is `"<branch>:<name>"`.
#[derive(Default)]
pub struct Account {
    balance: i64,
}

impl Actor for Account {
    const TYPE_NAME: &'static str = "bank-account";
}

/// What happens to an account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AccountEvent {
    /// Money paid in.
    Deposited {
        /// Cents.
        amount: i64,
    },
    /// Money paid out.
    Withdrew {
        /// Cents.
        amount: i64,
    },
}

impl JournalEvent for AccountEvent {
    fn type_name(&self) -> &'static str {
        match self {
            AccountEvent::Deposited { .. } => "Deposited",
            AccountEvent::Withdrew { .. } => "Withdrew",
        }
    }
}

impl EventSourced for Account {
    type Event = AccountEvent;
    type Snapshot = i64;
    fn initial(_: &ActorKey) -> Self {
        Account::default()
    }
    fn apply(&mut self, e: &AccountEvent) {
        match e {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }
    fn snapshot(&self) -> i64 {
        self.balance
    }
    fn restore(_: &ActorKey, balance: i64) -> Self {
        Account { balance }
    }
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// Not enough money.
    #[error("insufficient funds: balance {balance}, asked {amount}")]
    InsufficientFunds {
        /// The balance.
        balance: i64,
        /// The amount asked.
        amount: i64,
    },
    /// Amounts are positive.
    #[error("amount must be positive, got {0}")]
    BadAmount(i64),
    /// The journal refused.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The call failed.
    #[error(transparent)]
    Call(#[from] quark::CallError),
}

/// Pay in.
pub struct Deposit(pub i64);
impl Message for Deposit {
    type Reply = Result<LogPosition, BankError>;
}
impl Handler<Deposit> for Account {
    async fn handle(&mut self, m: Deposit, ctx: &Context<Self>) -> Result<LogPosition, BankError> {
        if m.0 <= 0 {
            return Err(BankError::BadAmount(m.0));
        }
        let p = ctx
            .persist(self, [AccountEvent::Deposited { amount: m.0 }])
            .await?;
        Ok(p.position)
    }
}

/// Pay out; refused if it would overdraw.
pub struct Withdraw(pub i64);
impl Message for Withdraw {
    type Reply = Result<LogPosition, BankError>;
}
impl Handler<Withdraw> for Account {
    async fn handle(&mut self, m: Withdraw, ctx: &Context<Self>) -> Result<LogPosition, BankError> {
        if m.0 <= 0 {
            return Err(BankError::BadAmount(m.0));
        }
        if m.0 > self.balance {
            return Err(BankError::InsufficientFunds {
                balance: self.balance,
                amount: m.0,
            });
        }
        let p = ctx
            .persist(self, [AccountEvent::Withdrew { amount: m.0 }])
            .await?;
        Ok(p.position)
    }
}

/// Move money to another account: withdraw here, then deposit there.
pub struct Transfer {
    /// The receiving account's key.
    pub to: String,
    /// Cents.
    pub amount: i64,
}
impl Message for Transfer {
    type Reply = Result<Vec<LogPosition>, BankError>;
}
impl Handler<Transfer> for Account {
    async fn handle(
        &mut self,
        m: Transfer,
        ctx: &Context<Self>,
    ) -> Result<Vec<LogPosition>, BankError> {
        let out = Handler::<Withdraw>::handle(self, Withdraw(m.amount), ctx).await?;
        let to = ctx.actor_ref::<Account>(m.to);
        let inn = to.ask(Deposit(m.amount)).await??;
        Ok(vec![out, inn])
    }
}

/// The balance.
pub struct Balance;
impl Message for Balance {
    type Reply = i64;
}
impl Handler<Balance> for Account {
    async fn handle(&mut self, _: Balance, _: &Context<Self>) -> i64 {
        self.balance
    }
}

/// Total balance per branch (the part of the key before `:`).
pub struct BranchBalances;
impl Projection for BranchBalances {
    const NAME: &'static str = "bank-branch-balances";
    type State = BTreeMap<String, i64>;
    fn subscriptions() -> Subscriptions<Self> {
        Subscriptions::<Self>::new().on::<Account>(
            |totals: &mut BTreeMap<String, i64>, meta: &EventMeta, e: &AccountEvent| {
                let key = match &meta.key {
                    ActorKey::Str(s) => s.to_string(),
                    other => other.to_string(),
                };
                let branch = key.split(':').next().unwrap_or_default().to_owned();
                let delta = match e {
                    AccountEvent::Deposited { amount } => *amount,
                    AccountEvent::Withdrew { amount } => -amount,
                };
                *totals.entry(branch).or_default() += delta;
            },
        )
    }
}

fn start(dir: &Path) -> anyhow::Result<Node> {
    let text = format!(
        "[node]\nshards = 2\n[log]\ndata_dir = {:?}\nfsync = \"always\"\n[actors.bank-account]\nsnapshot_every_events = 100\n",
        dir.to_str().ok_or_else(|| anyhow::anyhow!("data dir is not UTF-8"))?
    );
    Ok(Node::builder()
        .config(NodeConfig::from_toml(&text, "bank.toml")?)
        .register_journaled::<Account>(JournalPolicy::default())
        .register_projection::<BranchBalances>(ProjectionConfig::default())
        .start()?)
}

const BRANCHES: [&str; 3] = ["north", "south", "east"];

fn accounts() -> Vec<String> {
    BRANCHES
        .iter()
        .flat_map(|b| (0..10).map(move |i| format!("{b}:acct-{i}")))
        .collect()
}

/// Runs the scenario in `dir`; returns the final per-branch balances (checked).
pub fn run(dir: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    let accts = accounts();
    let mut last: Vec<LogPosition> = Vec::new();
    // Part one: open accounts and move money around.
    let node = start(dir)?;
    for (i, a) in accts.iter().enumerate() {
        last.push(block_on(
            node.actor_ref::<Account>(a.as_str())
                .ask(Deposit(1_000 + i as i64)),
        )??);
    }
    let mut refused = 0;
    for round in 0..3 {
        for (i, a) in accts.iter().enumerate() {
            let to = accts[(i * 7 + round + 1) % accts.len()].clone();
            let amount = 100 + (i as i64 * 37 + round as i64 * 11) % 900;
            match block_on(
                node.actor_ref::<Account>(a.as_str())
                    .ask(Transfer { to, amount }),
            )? {
                Ok(p) => last.extend(p),
                Err(BankError::InsufficientFunds { .. }) => refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Overdrawing is refused and changes nothing.
    let poor = accts[0].as_str();
    let before = block_on(node.actor_ref::<Account>(poor).ask(Balance))?;
    let r = block_on(node.actor_ref::<Account>(poor).ask(Withdraw(before + 1)))?;
    anyhow::ensure!(
        matches!(r, Err(BankError::InsufficientFunds { .. })),
        "overdraw not refused: {r:?}"
    );
    println!("part one: {} transfers refused for lack of funds", refused);
    node.shutdown();

    // Part two: the node restarts; accounts and the projection resume from the log.
    let node = start(dir)?;
    for (i, a) in accts.iter().enumerate().step_by(3) {
        last.push(block_on(
            node.actor_ref::<Account>(a.as_str())
                .ask(Withdraw(1 + i as i64)),
        )??);
    }
    let projection = node.projection::<BranchBalances>();
    // Read-your-writes: wait until the projection has every write of part two. Writes of part
    // one are covered: positions only grow within a shard.
    for p in &last {
        if p.lsn > 0 {
            // Positions of part one come from before the restart; a shard's LSNs keep growing
            // across restarts, so the projection reaches them as well.
            block_on(projection.wait_for(*p, Duration::from_secs(30)))
                .map_err(|e| anyhow::anyhow!("projection did not catch up: {e}"))?;
        }
    }
    let mut from_accounts: BTreeMap<String, i64> = BTreeMap::new();
    for a in &accts {
        let b = block_on(node.actor_ref::<Account>(a.as_str()).ask(Balance))?;
        anyhow::ensure!(b >= 0, "{a} is overdrawn: {b}");
        let branch = a.split(':').next().unwrap_or_default().to_owned();
        *from_accounts.entry(branch).or_default() += b;
    }
    let projected = block_on(projection.query(|s| s.clone()))?;
    node.shutdown();
    println!("branch balances from the accounts:   {from_accounts:?}");
    println!("branch balances from the projection: {projected:?}");
    anyhow::ensure!(
        projected == from_accounts,
        "the projection differs from the sum of the accounts"
    );
    Ok(projected)
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let kept = std::env::args().nth(1);
    let tmp = tempfile::tempdir()?;
    let dir = kept.as_deref().map(Path::new).unwrap_or_else(|| tmp.path());
    run(dir)?;
    println!("ok: the projection equals the sum of the accounts");
    Ok(())
}
