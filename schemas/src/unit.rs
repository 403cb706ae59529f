//! The units a price rate is set in (`Rate::unit` of `meterline.prices`).

pub const INPUT: &str = "input_token";
pub const OUTPUT: &str = "output_token";
pub const CACHE_READ: &str = "cache_read_token";
pub const CACHE_WRITE_5M: &str = "cache_write_5m_token";
pub const CACHE_WRITE_1H: &str = "cache_write_1h_token";
pub const REASONING: &str = "reasoning_token";
pub const AUDIO_INPUT: &str = "audio_input_token";
pub const AUDIO_OUTPUT: &str = "audio_output_token";
pub const IMAGE: &str = "image";
pub const SECOND: &str = "second";
pub const CHARACTER: &str = "character";
pub const REQUEST: &str = "request";
