//! The MapReduce runner (Dean & Ghemawat, OSDI 2004).
