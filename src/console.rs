//! `scopegate console`: the admin console, a client of the admin socket (so it works against a
//! running server from another terminal). Elm architecture: `model::update` and `view::render`
//! are pure; effects run on background workers (`effects`) and come back as messages, so the
//! UI never blocks on the server.

pub mod effects;
pub mod keymap;
pub mod model;
pub mod view;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use ratatui::crossterm::event::{self, Event};

use model::{Model, Msg, update};

/// One frame's wait for input; also the clock's tick.
const TICK: Duration = Duration::from_millis(250);

pub fn run(socket: &Path) -> anyhow::Result<()> {
    // Fail before taking over the terminal when no server answers.
    crate::admin::client::call::<crate::admin::proto::Status>(
        socket,
        &crate::admin::proto::Request::Status,
    )?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // `ratatui::try_init` also installs a panic hook that restores the terminal first.
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let result = event_loop(&mut terminal, socket, color);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    socket: &Path,
    color: bool,
) -> anyhow::Result<()> {
    let (tx, results) = mpsc::channel::<Msg>();
    let runner = effects::Runner::start(socket.to_owned(), tx);
    let mut m = Model::new(time::OffsetDateTime::now_utc(), color);
    for fx in Model::init() {
        runner.spawn(fx);
    }
    let mut last_tick = std::time::Instant::now();
    while !m.quit {
        terminal.draw(|f| view::render(&m, f))?;
        let mut msgs = Vec::new();
        let wait = TICK.saturating_sub(last_tick.elapsed());
        if event::poll(wait)?
            && let Event::Key(k) = event::read()?
            && let Some(msg) = keymap::to_msg(&m, k)
        {
            msgs.push(msg);
        }
        if last_tick.elapsed() >= TICK {
            last_tick = std::time::Instant::now();
            msgs.push(Msg::Tick(time::OffsetDateTime::now_utc()));
        }
        msgs.extend(results.try_iter());
        for msg in msgs {
            for fx in update(&mut m, msg) {
                runner.spawn(fx);
            }
        }
    }
    Ok(())
}
