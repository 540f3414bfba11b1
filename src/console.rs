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

pub fn run(socket: &Path, mouse: bool) -> anyhow::Result<()> {
    // Fail before taking over the terminal when no server answers.
    crate::admin::client::call::<crate::admin::proto::Status>(
        socket,
        &crate::admin::proto::Request::Status,
    )?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // `ratatui::try_init` also installs a panic hook that restores the terminal first.
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    if mouse {
        use ratatui::crossterm::{event::EnableMouseCapture, execute};
        // Released on panic too, before ratatui's hook restores the rest of the terminal.
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            release_mouse();
            next(info);
        }));
        if let Err(e) = execute!(std::io::stdout(), EnableMouseCapture) {
            ratatui::restore();
            return Err(e).context("cannot capture the mouse");
        }
    }
    let result = event_loop(&mut terminal, socket, color);
    if mouse {
        release_mouse();
    }
    ratatui::restore();
    result
}

fn release_mouse() {
    use ratatui::crossterm::{event::DisableMouseCapture, execute};
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
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
        if event::poll(wait)? {
            let msg = match event::read()? {
                Event::Key(k) => keymap::to_msg(&m, k),
                Event::Mouse(e) => keymap::mouse_to_msg(&m, e),
                _ => None,
            };
            msgs.extend(msg);
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
