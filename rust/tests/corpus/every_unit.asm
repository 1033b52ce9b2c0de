; every unit, with a .init, a .link and C2C: the seed of fuzz.rs's mutations
.queue MEM.W3
 NOP 2
 READ 16, W2
 REPEAT 7, 1
 WRITE 5, E1
.queue MEM.W0
 READ 0, E0
 GATHER E8, E0
.queue MEM.E1
 NOP 3
 WRITE 20, E4
 SCATTER E4, E0
.queue VXM.0
 NOP 2
 ADD.f32 E4, E0, #1.5
 CVT.f32.f16 W10, R0
 MUL.i32 -, R0, #3
.queue VXM.1
 SYNC
 EXP.f32 E12, E0
.queue VXM.2
 NOP 4
 NOTIFY
.queue MXM.W0.LW
 NOP 44
 LW.i8 W2, 2
.queue MXM.W0.IW
 NOP 45
 IW
.queue MXM.W0.ABC
 NOP 46
 ABC.i8 W2, 3
.queue MXM.W0.ACC
 NOP 90
 ACC.f32 3, E0
.queue SXM.W.0
 NOP 45
 SHIFT E3, W2, 5
 TRANSPOSE E16, W0
.queue C2C.0
 NOP 45
 SEND W2
.queue C2C.8
 NOP 60
 RECV W5
.init MEM.W3 16 f32 1.0 2.0
.init MEM.W0 0 u8 fill 3
.link 0 8 9
