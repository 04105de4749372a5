//! Guard `business-hours`: allows a firing only within working hours, read
//! from the plugin's clock. The host fixes that clock to the firing's time,
//! so the decision is reproducible (and testable with a fixed time).
//!
//! Config: `{"start_hour": 9, "end_hour": 17, "days": [1,2,3,4,5],
//! "utc_offset_minutes": 0}` (days: 1 = Monday ... 7 = Sunday; all keys
//! optional with these defaults). Deny code: `outside-business-hours`.

use std::time::{SystemTime, UNIX_EPOCH};

use cb_sdk::{Decision, Guard, GuardContext, deny};

struct BusinessHours;

impl Guard for BusinessHours {
    fn evaluate(ctx: GuardContext) -> Decision {
        let start = ctx.config["start_hour"].as_i64().unwrap_or(9);
        let end = ctx.config["end_hour"].as_i64().unwrap_or(17);
        let offset = ctx.config["utc_offset_minutes"].as_i64().unwrap_or(0);
        let days: Vec<i64> = ctx.config["days"]
            .as_array()
            .map(|d| d.iter().filter_map(|x| x.as_i64()).collect())
            .unwrap_or_else(|| vec![1, 2, 3, 4, 5]);
        // The WASI wall clock, fixed by the host to the firing time.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let local = now + offset * 60;
        let minutes_of_day = local.rem_euclid(86_400) / 60;
        let hour = minutes_of_day / 60;
        // 1970-01-01 was a Thursday (ISO day 4).
        let weekday = (local.div_euclid(86_400) + 3).rem_euclid(7) + 1;
        if days.contains(&weekday) && hour >= start && hour < end {
            return Decision::Allow;
        }
        deny("outside-business-hours")
            .message(format!(
                "it is {:02}:{:02} on day {weekday}; business hours are {start}:00-{end}:00 on days {days:?}",
                hour,
                minutes_of_day % 60
            ))
            .detail("weekday", weekday)
            .detail("hour", hour)
            .into()
    }
}

cb_sdk::export_guard!(BusinessHours);
